// A client built on Go's crypto/tls, for tests/passthrough_sniff.rs: its own ClientHello
// through the proxy, the master's certificate verified here against CAFILE and NAME, one
// HTTP/1.1 request, the answer on stdout. Standard library only (run with `go run`).
//
//	go run hello.go ADDR CAFILE NAME
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: hello ADDR CAFILE NAME")
		os.Exit(2)
	}
	addr, caFile, name := os.Args[1], os.Args[2], os.Args[3]
	pem, err := os.ReadFile(caFile)
	if err != nil {
		fail(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fail(fmt.Errorf("no certificate in %s", caFile))
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{
		RootCAs:    roots,
		ServerName: name,
		NextProtos: []string{"http/1.1"},
	})
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+name+"\r\nConnection: close\r\n\r\n"); err != nil {
		fail(err)
	}
	answer, err := io.ReadAll(conn)
	if err != nil {
		fail(err)
	}
	state := conn.ConnectionState()
	fmt.Printf("verified=%d alpn=%s\n%s", len(state.VerifiedChains), state.NegotiatedProtocol, answer)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "hello:", err)
	os.Exit(1)
}
