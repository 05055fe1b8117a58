package fakex

import (
	"context"
	"net"
	"sync"
)

// stallListener hands out connections that can be stalled: a stalled
// connection neither delivers what it reads nor sends anything, pongs
// included, yet stays open, like a half-dead TCP path.
type stallListener struct{ net.Listener }

func (l stallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &stallConn{Conn: c, stalled: make(chan struct{}), closed: make(chan struct{})}, nil
}

type stallConn struct {
	net.Conn
	stallOnce, closeOnce sync.Once
	stalled, closed      chan struct{}
}

type connKey struct{}

// withConn puts the connection into each request's context.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

func (c *stallConn) stall() { c.stallOnce.Do(func() { close(c.stalled) }) }

func (c *stallConn) isStalled() bool {
	select {
	case <-c.stalled:
		return true
	default:
		return false
	}
}

func (c *stallConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.isStalled() {
		<-c.closed
		return 0, net.ErrClosed
	}
	return n, err
}

func (c *stallConn) Write(p []byte) (int, error) {
	if c.isStalled() {
		<-c.closed
		return 0, net.ErrClosed
	}
	return c.Conn.Write(p)
}

func (c *stallConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
