package boot

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// MaxInitFiles bounds an init's descriptors: 0 to ConfigFD, which it
// inherits, and its mounts, which come in one message on ConfigFD (at most
// 253 descriptors, SCM_MAX_FD; the init's buffer is sized from this).
const MaxInitFiles = 200

// RecvMsg reads one message and the descriptors that came with it
// (close-on-exec). n is 0 at the end of the stream.
func RecvMsg(fd int, buf, oob []byte) (n int, fds []int, err error) {
	var oobn, flags int
	for {
		n, oobn, flags, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return 0, nil, err
	}
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return 0, nil, perr
		}
		for _, m := range msgs {
			if got, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		CloseFDs(fds)
		return 0, nil, fmt.Errorf("a message of %d bytes and %d descriptors was cut short", n, len(fds))
	}
	return n, fds, nil
}

// CloseFDs closes every descriptor of fds.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// SendMsg sends one message with the descriptors in oob (SCM_RIGHTS),
// again when a signal interrupts it.
func SendMsg(fd int, p, oob []byte) error {
	for {
		err := unix.Sendmsg(fd, p, oob, nil, unix.MSG_NOSIGNAL)
		if err != unix.EINTR {
			return err
		}
	}
}
