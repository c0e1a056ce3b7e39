// The lab's pion/turn server, built offline (scripts/pion.sh) in module mode against the
// sources Debian installs under /usr/share/gocode (golang-github-pion-turn.v2-dev and the
// packages it depends on), so that the executable carries Go build information naming
// github.com/pion/turn/v2 v2.1.0 as upstream builds do. The versions are Debian's.
// The modules under stub/ are only in the module graph for tests of pion's dependencies
// (testify, x/term, x/tools, x/mod): empty stand-ins, nothing of them is compiled.
module turn-bpf.test/pion-lab

go 1.19

require (
	github.com/pion/logging v0.2.2
	github.com/pion/turn/v2 v2.1.0
)

require (
	github.com/pion/randutil v0.1.0 // indirect
	github.com/pion/stun v0.4.0 // indirect
	github.com/pion/transport/v2 v2.0.2 // indirect
)

replace (
	github.com/pion/logging => /usr/share/gocode/src/github.com/pion/logging
	github.com/pion/randutil => /usr/share/gocode/src/github.com/pion/randutil
	github.com/pion/stun => /usr/share/gocode/src/github.com/pion/stun
	github.com/pion/transport/v2 => /usr/share/gocode/src/github.com/pion/transport
	github.com/pion/turn/v2 => /usr/share/gocode/src/github.com/pion/turn/v2
	golang.org/x/net => /usr/share/gocode/src/golang.org/x/net
	golang.org/x/sys => /usr/share/gocode/src/golang.org/x/sys
	golang.org/x/text => /usr/share/gocode/src/golang.org/x/text
)

replace (
	github.com/stretchr/testify => ./stub/testify
	golang.org/x/mod => ./stub/x-mod
	golang.org/x/term => ./stub/x-term
	golang.org/x/tools => ./stub/x-tools
)
