// A minimal SSH agent on golang.org/x/crypto/ssh/agent: the library under
// ssh-tpm-agent and yubikey-agent. One in-memory keyring, one goroutine per
// connection. `make bench` compares secretivex against it (ci/compare-openssh.sh);
// keys arrive through ssh-add, as with OpenSSH's ssh-agent.
//
// Build offline with Debian's golang-go and golang-golang-x-crypto-dev:
//
//	bash ci/build-go-agent.sh   (GOPATH=/usr/share/gocode GO111MODULE=off GOPROXY=off go build)
package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/crypto/ssh/agent"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-agent SOCKET")
		os.Exit(2)
	}
	path := os.Args[1]
	listener, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-agent:", err)
		os.Exit(1)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		listener.Close()
	}()
	keyring := agent.NewKeyring()
	for {
		conn, err := listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // EMFILE and friends: keep serving the others
		}
		go func(c net.Conn) {
			defer c.Close()
			_ = agent.ServeAgent(keyring, c)
		}(conn)
	}
}
