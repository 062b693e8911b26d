//go:build linux

package rawsock

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Wrap returns c with raw reads and writes when c is a *net.TCPConn, and c otherwise. The
// result is a net.Conn with every other method of c.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &conn{TCPConn: tc, rc: rc}
}

// conn embeds the *net.TCPConn for its other methods (deadlines, Close, addresses, keep-alive).
type conn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// Read reads into b; it waits on the poller while no data is ready, as net.Conn.Read does.
func (c *conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
			switch e {
			case 0:
				n = int(r)
				raceAcquireIO(fd)
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // not ready: wait on the poller, then try again
			default:
				errno = e
				return true
			}
		}
	})
	if err != nil {
		return 0, err // closed, or the deadline passed: already a *net.OpError
	}
	if errno != 0 {
		return 0, c.opError("read", errno)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of b, waiting on the poller while the socket's send buffer is full.
func (c *conn) Write(b []byte) (int, error) {
	var n int
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		if n == 0 {
			raceReleaseIO(fd)
		}
		for n < len(b) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
			switch e {
			case 0:
				n += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false // send buffer full: wait on the poller, then go on from n
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err != nil {
		return n, err
	}
	if errno != 0 {
		return n, c.opError("write", errno)
	}
	return n, nil
}

// opError wraps a system call's error as the net package does, so callers can test it with
// errors.Is (syscall.ECONNRESET, syscall.EPIPE) as before.
func (c *conn) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}
