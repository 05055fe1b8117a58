package e2e

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/fakex"
)

// TestProxies runs klagg through an HTTP proxy and through a SOCKS5 proxy:
// its REST calls and its trade streams must all pass through the proxy, and
// the store must still equal the exchange's reference.
func TestProxies(t *testing.T) {
	for _, kind := range []string{"http", "socks5"} {
		t.Run(kind, func(t *testing.T) {
			p := startProxy(t, kind)
			r := newRun(t, fakex.Config{Symbols: 3}, "")
			r.appendExchange(fmt.Sprintf(`proxy = "%s://%s"`, kind, p.addr))
			r.startKlagg()
			r.until(4 * time.Minute)
			r.stop()
			r.check(4 * time.Minute)
			if p.requests.Load() == 0 || p.upgrades.Load() == 0 {
				t.Fatalf("through the proxy: %d REST connections, %d WebSocket connections; want both", p.requests.Load(), p.upgrades.Load())
			}
		})
	}
}

// proxy is a minimal forward proxy on loopback that tells REST connections
// from WebSocket ones by the first request it carries.
type proxy struct {
	addr               string
	requests, upgrades atomic.Int64
}

func startProxy(t *testing.T, kind string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				if kind == "socks5" {
					p.socks5(c)
				} else {
					p.http(c)
				}
			})
		}
	})
	return p
}

// http serves CONNECT tunnels and absolute-form requests (what Go's
// transport sends for http:// and ws:// targets through an HTTP proxy).
func (p *proxy) http(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	up, err := net.Dial("tcp", req.URL.Host)
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer up.Close()
	if req.Method == http.MethodConnect {
		fmt.Fprintf(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		p.pipe(c, br, up)
		return
	}
	p.count(req)
	if err := req.Write(up); err != nil {
		return
	}
	p.pipe(c, br, up)
}

// socks5 serves RFC 1928 CONNECT without authentication.
func (p *proxy) socks5(c net.Conn) {
	br := bufio.NewReader(c)
	var hello [2]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil || hello[0] != 5 {
		return
	}
	if _, err := io.ReadFull(br, make([]byte, hello[1])); err != nil {
		return
	}
	c.Write([]byte{5, 0})
	var head [4]byte
	if _, err := io.ReadFull(br, head[:]); err != nil || head[1] != 1 {
		return
	}
	var host string
	switch head[3] {
	case 1:
		ip := make([]byte, 4)
		io.ReadFull(br, ip)
		host = net.IP(ip).String()
	case 3:
		n, _ := br.ReadByte()
		name := make([]byte, n)
		io.ReadFull(br, name)
		host = string(name)
	case 4:
		ip := make([]byte, 16)
		io.ReadFull(br, ip)
		host = net.IP(ip).String()
	}
	var port [2]byte
	if _, err := io.ReadFull(br, port[:]); err != nil {
		return
	}
	up, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(port[:])))))
	if err != nil {
		c.Write([]byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	defer up.Close()
	c.Write([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	// Peek at the first request to count it, then pass everything on.
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	p.count(req)
	if err := req.Write(up); err != nil {
		return
	}
	p.pipe(c, br, up)
}

func (p *proxy) count(req *http.Request) {
	if req.Header.Get("Upgrade") != "" {
		p.upgrades.Add(1)
	} else {
		p.requests.Add(1)
	}
}

// pipe copies both ways until either side closes.
func (p *proxy) pipe(c net.Conn, br *bufio.Reader, up net.Conn) {
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, br); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}
