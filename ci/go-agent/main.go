// A minimal SSH agent on golang.org/x/crypto/ssh/agent: the library under
// ssh-tpm-agent and yubikey-agent. One in-memory keyring, one goroutine per
// connection. `make bench` compares secretivex against it (ci/compare-openssh.sh);
// keys arrive through ssh-add, as with OpenSSH's ssh-agent.
//
// `go-agent -ceiling SECONDS` prints this host's in-process signatures/s per
// algorithm instead (x/crypto/ssh signers, one goroutine and one per CPU), the Go
// side of the comparison's signing-ceiling table.
//
// Build offline with Debian's golang-go and golang-golang-x-crypto-dev:
//
//	bash ci/build-go-agent.sh   (GOPATH=/usr/share/gocode GO111MODULE=off GOPROXY=off go build)
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// rate: signatures/s of sign() over d, on `workers` goroutines.
func rate(sign func(), workers int, d time.Duration) float64 {
	var count atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	start := time.Now()
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				sign()
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(count.Load()) / time.Since(start).Seconds()
}

func ceiling(seconds float64) error {
	d := time.Duration(seconds * float64(time.Second))
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		return err
	}
	data := make([]byte, 128)
	cpus := runtime.NumCPU()
	for _, k := range []struct {
		name      string
		key       crypto.Signer
		algorithm string
	}{{"ed25519", edKey, ""}, {"ecdsa-p256", ecKey, ""}, {"rsa-3072", rsaKey, ssh.KeyAlgoRSASHA512}} {
		signer, err := ssh.NewSignerFromSigner(k.key)
		if err != nil {
			return err
		}
		sign := func() { _, _ = signer.Sign(rand.Reader, data) }
		if k.algorithm != "" {
			as := signer.(ssh.AlgorithmSigner)
			sign = func() { _, _ = as.SignWithAlgorithm(rand.Reader, data, k.algorithm) }
		}
		fmt.Printf("%s %.0f %.0f\n", k.name, rate(sign, 1, d), rate(sign, cpus, d))
	}
	return nil
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-ceiling" {
		seconds, err := strconv.ParseFloat(os.Args[2], 64)
		if err == nil {
			err = ceiling(seconds)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "go-agent:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-agent SOCKET | go-agent -ceiling SECONDS")
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
