package api

import (
	"net"
	"sync"
	"sync/atomic"
)

// Listener caps the connections a server holds open at once, WebSocket
// ones included: a connection beyond the cap is closed as soon as it is
// accepted, so that a flood of clients fails fast instead of taking the
// process's last file descriptors, which the store and the exchange
// connections need.
type Listener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Int64
}

// NewListener caps ln at max open connections.
func NewListener(ln net.Listener, max int) *Listener {
	return &Listener{Listener: ln, max: int64(max)}
}

// Accept returns the next connection within the cap.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refused.Add(1)
			c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

// Open is the number of connections open now.
func (l *Listener) Open() int64 { return l.open.Load() }

// Refused is the number of connections closed for the cap.
func (l *Listener) Refused() int64 { return l.refused.Load() }

// countedConn gives its place back on its first Close, whoever holds it
// then (the HTTP server, or the WebSocket library after a hijack).
type countedConn struct {
	net.Conn
	once sync.Once
	l    *Listener
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
