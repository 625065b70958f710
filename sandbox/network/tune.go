package network

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// tuning of the data path, measured with TestNetBench (see NOTES.md).
// Variables rather than constants so that the benchmark can compare.
type tuningParams struct {
	// copyBuffer is the size of each proxy copy.
	copyBuffer int
	// rcvWnd is the initial receive window offered to the sandbox's
	// connections (the upload direction).
	rcvWnd int
	// sndBuf and rcvBuf are the netstack's TCP buffer ranges.
	sndBuf, rcvBuf tcpip.TCPSendBufferSizeRangeOption
	// moderate enables receive buffer auto-tuning.
	moderate bool
	// qdiscLen, if not 0, puts a FIFO queue of that many packets between
	// the netstack and the device, with its own goroutine writing to the
	// device: sending (a write to the device runs the sandbox kernel's
	// receive path) then runs in parallel with the netstack's TCP work.
	qdiscLen int
	// bulkCopies bounds the copies (one per direction of a connection)
	// of one link in bulk mode at once, each holding up to three
	// copyBuffers; the others copy through their small buffer. It bounds
	// the server's memory a sandbox can pin with many fast connections it
	// does not read.
	bulkCopies int
}

// tuning is copied into each Link at Attach.
var tuning = tuningParams{
	copyBuffer: 1 << 20,
	rcvWnd:     1 << 20,
	// At most 4 MiB each way (the prototype's maxima were 8): the
	// netstack's buffers of a connection whose sandbox does not read, or
	// whose destination does not, are the server's memory.
	sndBuf:     tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 4 << 20, Max: 4 << 20},
	rcvBuf:     tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20},
	moderate:   true,
	qdiscLen:   1000,
	bulkCopies: 4,
}

// maxHandshakes bounds connections being set up at once (SYNs the handler
// has not decided yet); more SYNs are dropped and retried by the
// sandbox's kernel.
const maxHandshakes = 512

func tuneTCP(s *stack.Stack, tuning tuningParams) {
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	moderate := tcpip.TCPModerateReceiveBufferOption(tuning.moderate)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption(tuning.rcvBuf)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tuning.sndBuf
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	cc := tcpip.CongestionControlOption("cubic")
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &cc)
	// No TIME-WAIT. gVisor lets a new SYN take over a TIME-WAIT
	// connection only when a listening endpoint exists; the forwarder is
	// none, so a sandbox reusing a port (its own side of a connection it
	// did not close first holds no TIME-WAIT) would hang for the whole
	// TIME-WAIT (60s by default). The link is a point-to-point device to
	// one kernel: no old duplicates can be wandering about.
	tw := tcpip.TCPTimeWaitTimeoutOption(0)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &tw)
}
