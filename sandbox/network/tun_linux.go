package network

import (
	"encoding/binary"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// virtio_net_hdr (linux/virtio_net.h), which precedes every packet on a
// TUN device opened with IFF_VNET_HDR. Little-endian on every platform
// Linux runs virtio-net on in legacy mode here (x86, arm64).
const (
	vnetHdrLen = 10

	vnetFlagNeedsCsum = 1 // checksum partial: only the pseudo-header sum is filled in
	vnetGSONone       = 0
	vnetGSOTCPv4      = 1
	vnetGSOTCPv6      = 4

	// gsoMaxSize bounds the TCP segments the netstack hands the device in
	// one write (headers included): the IP length field's limit.
	gsoMaxSize = 65535
)

// tunEndpoint is the netstack's link endpoint on the server's end of the
// sandbox's TUN device. It differs from gVisor's fdbased endpoint in three
// ways that matter here:
//
//   - Offloads. The device carries a virtio-net header, so checksums are
//     neither computed nor verified on either side of the device: the
//     netstack sends TCP segments of up to 64 KiB with a partial checksum
//     (host GSO), the sandbox's kernel takes them as verified, and the
//     kernel sends its own packets with partial checksums (TUN_F_CSUM),
//     which the netstack does not verify either (they never leave this
//     machine unchecked: the server's own sockets re-checksum what they
//     send).
//   - Reading goes through the Go netpoller: no OS thread per sandbox
//     blocked in poll(2), and the reader drains the device before it
//     sleeps again.
//   - Stopping. stop() ends the reader without holding any lock the
//     reader may need; fdbased can deadlock when a packet arrives while
//     its NIC is removed (Attach(nil) waits for the reader under the lock
//     the reader takes to deliver).
type tunEndpoint struct {
	file *os.File
	rc   syscall.RawConn
	mtu  uint32

	dispatcher atomic.Pointer[stack.NetworkDispatcher]
	started    atomic.Bool
	stopOnce   sync.Once
	done       chan struct{}
	// queued counts the packets a queue in front of the endpoint holds
	// for it (see queue): stop lets them out first, woken on drained
	// when the count falls to zero.
	queued  atomic.Int64
	drained chan struct{}
}

var _ stack.LinkEndpoint = (*tunEndpoint)(nil)
var _ stack.GSOEndpoint = (*tunEndpoint)(nil)

// newTUNEndpoint takes over file, a non-blocking TUN device opened with
// IFF_VNET_HDR.
func newTUNEndpoint(file *os.File, mtu uint32) (*tunEndpoint, error) {
	rc, err := file.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &tunEndpoint{file: file, rc: rc, mtu: mtu, done: make(chan struct{}), drained: make(chan struct{}, 1)}, nil
}

// Attach sets the dispatcher packets are delivered to; a nil dispatcher
// (the NIC going away) stops delivery. Reading starts with start.
func (e *tunEndpoint) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		e.dispatcher.Store(nil)
		return
	}
	e.dispatcher.Store(&d)
}

// start starts reading the device, once the stack is fully set up (the
// stack's handlers are not safe to change while packets flow).
func (e *tunEndpoint) start() {
	if e.started.CompareAndSwap(false, true) {
		go e.readLoop()
	}
}

func (e *tunEndpoint) IsAttached() bool { return e.dispatcher.Load() != nil }

// queueDrainTimeout bounds how long stop waits for the packets queued for
// the device (the resets of a closing link among them) to be written.
const queueDrainTimeout = 100 * time.Millisecond

// stop writes what is queued for the device, closes it and waits for the
// reader to end. It must not be called with any netstack lock held.
func (e *tunEndpoint) stop() error {
	var err error
	e.stopOnce.Do(func() {
		// Nothing more in: what the sandbox sends now would only queue
		// more resets.
		e.dispatcher.Store(nil)
		timeout := time.NewTimer(queueDrainTimeout)
		defer timeout.Stop()
	drain:
		for e.queued.Load() > 0 {
			select {
			case <-e.drained:
			case <-timeout.C:
				break drain
			}
		}
		err = e.file.Close() // wakes the reader, fails later writes
		if e.started.Load() {
			<-e.done
		}
	})
	return err
}

func (e *tunEndpoint) readLoop() {
	defer close(e.done)
	buf := make([]byte, vnetHdrLen+65535)
	for {
		var n int
		var rerr error
		err := e.rc.Read(func(fd uintptr) bool {
			for {
				n, rerr = unix.Read(int(fd), buf)
				switch {
				case rerr == unix.EAGAIN:
					return false // wait until readable
				case rerr == unix.EINTR:
					continue
				case rerr != nil:
					return true
				}
				e.deliver(buf[:n])
			}
		})
		if err != nil || (rerr != nil && rerr != unix.EAGAIN) {
			return // closed
		}
	}
}

// deliver hands one packet (with its virtio-net header) to the netstack.
func (e *tunEndpoint) deliver(b []byte) {
	dp := e.dispatcher.Load()
	if dp == nil || len(b) <= vnetHdrLen {
		return
	}
	b = b[vnetHdrLen:]
	var proto tcpip.NetworkProtocolNumber
	switch header.IPVersion(b) {
	case header.IPv4Version:
		proto = header.IPv4ProtocolNumber
	case header.IPv6Version:
		proto = header.IPv6ProtocolNumber
	default:
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload: buffer.MakeWithView(buffer.NewViewWithData(b)),
	})
	(*dp).DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
}

// queue puts q, a queue whose lower end is queuedWriter{e}, in front of
// the endpoint, counting the packets it holds.
func (e *tunEndpoint) queue(q stack.QueueingDiscipline) stack.QueueingDiscipline {
	return &countedQueue{QueueingDiscipline: q, ep: e}
}

// countedQueue counts the packets it takes in ep.queued.
type countedQueue struct {
	stack.QueueingDiscipline
	ep *tunEndpoint
}

func (q *countedQueue) WritePacket(pkt *stack.PacketBuffer) tcpip.Error {
	q.ep.queued.Add(1) // before: the queue may write it at once
	err := q.QueueingDiscipline.WritePacket(pkt)
	if err != nil {
		q.ep.dequeued(1)
	}
	return err
}

// dequeued counts n packets out of the queue, and wakes stop when none is
// left.
func (e *tunEndpoint) dequeued(n int) {
	if e.queued.Add(-int64(n)) == 0 {
		select {
		case e.drained <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// queuedWriter is the endpoint as the lower end of a countedQueue: it
// counts out the packets it is handed, written or not.
type queuedWriter struct{ *tunEndpoint }

func (w queuedWriter) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := pkts.Len() // the list is not ours after the call
	defer w.dequeued(n)
	return w.tunEndpoint.WritePackets(pkts)
}

// WritePackets writes each packet with one writev. The device never
// blocks a writer (the sandbox's kernel takes the packet or drops it), so
// a packet that cannot be written is dropped, as on a wire.
func (e *tunEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if err := e.writePacket(pkt); err != nil {
			if n == 0 {
				return 0, err
			}
			break
		}
		n++
	}
	return n, nil
}

func (e *tunEndpoint) writePacket(pkt *stack.PacketBuffer) tcpip.Error {
	var hdr [vnetHdrLen]byte
	if pkt.GSOOptions.Type != stack.GSONone && pkt.GSOOptions.NeedsCsum {
		l3 := len(pkt.NetworkHeader().Slice())
		hdr[0] = vnetFlagNeedsCsum
		binary.LittleEndian.PutUint16(hdr[2:], uint16(pkt.HeaderSize()))
		binary.LittleEndian.PutUint16(hdr[6:], uint16(l3))
		binary.LittleEndian.PutUint16(hdr[8:], pkt.GSOOptions.CsumOffset)
		if pkt.Data().Size() > int(pkt.GSOOptions.MSS) {
			switch pkt.GSOOptions.Type {
			case stack.GSOTCPv4:
				hdr[1] = vnetGSOTCPv4
			case stack.GSOTCPv6:
				hdr[1] = vnetGSOTCPv6
			}
			binary.LittleEndian.PutUint16(hdr[4:], pkt.GSOOptions.MSS)
		}
	}
	views := pkt.AsSlices()
	var iovArr [8][]byte
	iov := append(iovArr[:0], hdr[:])
	iov = append(iov, views...)
	var werr error
	err := e.rc.Write(func(fd uintptr) bool {
		for {
			_, werr = unix.Writev(int(fd), iov)
			if werr != unix.EINTR {
				return true
			}
		}
	})
	if err != nil {
		return &tcpip.ErrClosedForSend{}
	}
	if werr != nil {
		if errors.Is(werr, unix.EBADFD) || errors.Is(werr, unix.EIO) {
			return &tcpip.ErrClosedForSend{}
		}
		return nil // dropped, as a full queue would
	}
	return nil
}

func (e *tunEndpoint) MTU() uint32                             { return e.mtu }
func (e *tunEndpoint) SetMTU(mtu uint32)                       { e.mtu = mtu }
func (e *tunEndpoint) MaxHeaderLength() uint16                 { return 0 }
func (e *tunEndpoint) LinkAddress() tcpip.LinkAddress          { return "" }
func (e *tunEndpoint) SetLinkAddress(tcpip.LinkAddress)        {}
func (e *tunEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (e *tunEndpoint) AddHeader(*stack.PacketBuffer)           {}
func (e *tunEndpoint) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (e *tunEndpoint) Close()                                  {}
func (e *tunEndpoint) SetOnCloseAction(func())                 {}
func (e *tunEndpoint) GSOMaxSize() uint32                      { return gsoMaxSize }
func (e *tunEndpoint) SupportedGSO() stack.SupportedGSO        { return stack.HostGSOSupported }

// Wait returns at once: the reader is stopped by stop, not by the stack.
func (e *tunEndpoint) Wait() {}

// Capabilities: checksums are neither verified on receive (the kernel's
// packets carry partial checksums) nor, for TCP, computed on send.
func (e *tunEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}
