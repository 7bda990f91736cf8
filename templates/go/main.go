// Command {{name}} is a faasd handler in Go, serving its one connection with net/http.
//
// faasd starts a fresh container for every TCP connection to the function's IP. The handler connects to
// /control.sock, receives the client's TCP socket by SCM_RIGHTS (message data "SOCKET"), serves HTTP on it and exits
// once the connection is closed. The container has no network of its own: the received socket is its only way out.
// With faasd's warm pool the process may start long before its connection arrives, so do slow set-up before
// receiveClient.
package main

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
)

const (
	functionName = "{{name}}"
	controlSock  = "/control.sock"
)

// handle answers every request: your code goes here.
func handle(w http.ResponseWriter, r *http.Request) {
	log.Printf("%s %s", r.Method, r.URL.RequestURI()) // goes to the function's log: faas logs {{name}}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "hello from %s\n", functionName)
}

func main() {
	log.SetFlags(0)
	ctl, conn, err := receiveClient(controlSock)
	if err != nil {
		log.Fatal(err)
	}
	defer ctl.Close() // faasd takes the control connection's end as the handler's end

	server := &http.Server{Handler: http.HandlerFunc(handle)}
	// One container serves one connection: close it after the answer instead of waiting for the client's next request.
	server.SetKeepAlivesEnabled(false)
	if err := server.Serve(newOneConnListener(conn)); !errors.Is(err, errServed) {
		log.Fatal(err)
	}
}

// receiveClient connects to the control socket at path and receives the client's TCP connection from it. The control
// connection is returned too: it must stay open (and referenced) until the process exits.
func receiveClient(path string) (*net.UnixConn, net.Conn, error) {
	ctl, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	data := make([]byte, 16)
	oob := make([]byte, syscall.CmsgSpace(4)) // room for one int fd
	_, oobn, flags, _, err := ctl.ReadMsgUnix(data, oob)
	if err != nil {
		ctl.Close()
		return nil, nil, fmt.Errorf("receive from %s: %w", path, err)
	}
	if flags&syscall.MSG_CTRUNC != 0 {
		ctl.Close()
		return nil, nil, fmt.Errorf("receive from %s: control message truncated", path)
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		ctl.Close()
		return nil, nil, fmt.Errorf("no socket received on %s", path)
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		ctl.Close()
		return nil, nil, fmt.Errorf("no socket received on %s", path)
	}
	file := os.NewFile(uintptr(fds[0]), "client")
	conn, err := net.FileConn(file) // dups the fd: close the original
	file.Close()
	if err != nil {
		ctl.Close()
		return nil, nil, fmt.Errorf("client socket: %w", err)
	}
	return ctl, conn, nil
}

// errServed ends Serve once the one connection is closed.
var errServed = errors.New("connection served")

// oneConnListener is a net.Listener that returns its connection once, then blocks until that connection is closed
// and returns errServed, so that http.Server.Serve returns.
type oneConnListener struct {
	conns  chan net.Conn
	closed chan struct{}
	addr   net.Addr
}

func newOneConnListener(conn net.Conn) *oneConnListener {
	l := &oneConnListener{conns: make(chan net.Conn, 1), closed: make(chan struct{}), addr: conn.LocalAddr()}
	l.conns <- &notifyConn{Conn: conn, closed: l.closed}
	close(l.conns)
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if conn, ok := <-l.conns; ok {
		return conn, nil
	}
	<-l.closed
	return nil, errServed
}

// Close is called by Serve on its way out; the connection itself is closed by the server.
func (l *oneConnListener) Close() error { return nil }

func (l *oneConnListener) Addr() net.Addr { return l.addr }

// notifyConn closes its channel when the connection is closed, or shut down for writing: net/http does that (and
// then lingers 500 ms before closing) when the handler left part of a request body unread. The answer is complete by
// then, and faasd drains what is left once the process exits.
type notifyConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

func (c *notifyConn) CloseWrite() error {
	var err error
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		err = cw.CloseWrite()
	}
	c.once.Do(func() { close(c.closed) })
	return err
}
