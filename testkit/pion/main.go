// Command pion-turn-server runs pion/turn v2 (turn.NewServer) for the turn-bpf lab: UDP
// listeners on the given addresses, one static relay address per listener, long-term
// credentials from -users, and the channel lifetime pion lets a server choose
// (ServerConfig.ChannelBindTimeout). scripts/pion.sh builds it offline against Debian's
// sources; scripts/lab.sh runs it in the server namespace instead of coturn.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pion/logging"
	"github.com/pion/turn/v2"
)

// list is a flag that may be given more than once.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var listens, relays list
	flag.Var(&listens, "listen", "UDP address to listen on, IPv4 or [IPv6]:port (repeatable)")
	flag.Var(&relays, "relay", "relay IP address; a listener uses the first of its own family, else the first given (repeatable)")
	users := flag.String("users", "", "credentials, user=pass[,user=pass...]")
	realm := flag.String("realm", "pion.ly", "realm")
	channelLifetime := flag.Duration("channel-lifetime", 0, "channel lifetime (ChannelBindTimeout; 0: pion's default, 10m)")
	logLevel := flag.String("log-level", "info", "error, warn, info, debug or trace")
	flag.Parse()

	if len(listens) == 0 || len(relays) == 0 || *users == "" {
		log.Fatal("-listen, -relay and -users are required")
	}
	level, ok := map[string]logging.LogLevel{
		"error": logging.LogLevelError, "warn": logging.LogLevelWarn,
		"info": logging.LogLevelInfo, "debug": logging.LogLevelDebug,
		"trace": logging.LogLevelTrace,
	}[*logLevel]
	if !ok {
		log.Fatalf("unknown -log-level %q", *logLevel)
	}
	keys := map[string][]byte{}
	for _, kv := range strings.Split(*users, ",") {
		user, pass, found := strings.Cut(kv, "=")
		if !found || user == "" {
			log.Fatalf("-users: %q is not user=pass", kv)
		}
		keys[user] = turn.GenerateAuthKey(user, *realm, pass)
	}
	relayIPs := make([]net.IP, 0, len(relays))
	for _, r := range relays {
		ip := net.ParseIP(r)
		if ip == nil {
			log.Fatalf("-relay: %q is not an IP address", r)
		}
		relayIPs = append(relayIPs, ip)
	}

	var configs []turn.PacketConnConfig
	for _, l := range listens {
		addr, err := net.ResolveUDPAddr("udp", l)
		if err != nil {
			log.Fatalf("-listen %q: %v", l, err)
		}
		network := "udp4"
		if addr.IP.To4() == nil {
			network = "udp6"
		}
		conn, err := net.ListenUDP(network, addr)
		if err != nil {
			log.Fatalf("listening on %s: %v", l, err)
		}
		relay := pickRelay(relayIPs, addr.IP.To4() != nil)
		configs = append(configs, turn.PacketConnConfig{
			PacketConn: conn,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
				RelayAddress: relay,
				Address:      relay.String(),
			},
		})
		fmt.Printf("listening on %s (%s), relaying from %s\n", conn.LocalAddr(), network, relay)
	}

	factory := logging.NewDefaultLoggerFactory()
	factory.DefaultLogLevel = level
	server, err := turn.NewServer(turn.ServerConfig{
		Realm:         *realm,
		LoggerFactory: factory,
		AuthHandler: func(username, realm string, src net.Addr) ([]byte, bool) {
			key, ok := keys[username]
			return key, ok
		},
		PacketConnConfigs:  configs,
		ChannelBindTimeout: *channelLifetime,
	})
	if err != nil {
		log.Fatalf("turn.NewServer: %v", err)
	}
	lifetime := *channelLifetime
	if lifetime == 0 {
		lifetime = 10 * time.Minute
	}
	fmt.Printf("pion/turn server up: realm %s, channel lifetime %s\n", *realm, lifetime)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	<-sigs
	if err := server.Close(); err != nil {
		log.Fatalf("closing: %v", err)
	}
}

// pickRelay returns the first relay address of the listener's family, else the first one.
func pickRelay(relays []net.IP, v4 bool) net.IP {
	for _, ip := range relays {
		if (ip.To4() != nil) == v4 {
			return ip
		}
	}
	return relays[0]
}
