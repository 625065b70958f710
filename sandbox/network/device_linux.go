package network

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/network/netns"
)

// deviceConfig is what the sandbox's side of the link looks like.
type deviceConfig struct {
	name     string
	mtu      int
	txQLen   int
	addr4    netip.Prefix
	gateway4 netip.Addr
	addr6    netip.Prefix // invalid: no IPv6
	gateway6 netip.Addr
}

// tunOffload are the offloads the device accepts from the sandbox's
// kernel: partial checksums only. (TSO would let the kernel send 64 KiB
// segments on a small MTU; with a 64 KiB MTU there is nothing to gain.)
var tunOffload = unix.TUN_F_CSUM

// createDevice creates a TUN device inside the network namespace ns,
// configures its addresses, MTU and default routes there, brings it and
// loopback up, and returns the device's file: the server's end of the
// sandbox's only way out.
//
// The device belongs to the namespace of the thread that opened
// /dev/net/tun, so the open happens on a thread inside ns. The device is
// not persistent: it vanishes when the returned file is closed, and it
// keeps ns alive as long as it is open.
func createDevice(ns *os.File, dc deviceConfig) (*os.File, error) {
	var tun *os.File
	err := netns.Do(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("opening /dev/net/tun: %w", err)
		}
		if err := tunSetIff(fd, dc.name, unix.IFF_TUN|unix.IFF_NO_PI|unix.IFF_VNET_HDR); err != nil {
			unix.Close(fd)
			return fmt.Errorf("creating tun device %q: %w", dc.name, err)
		}
		// The sandbox's kernel may leave checksums to the device (we
		// need none: every connection is terminated here).
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunOffload); err != nil {
			unix.Close(fd)
			return fmt.Errorf("tun offloads: %w", err)
		}
		// Only now, attached to its device, may the descriptor meet the
		// Go netpoller: a detached TUN descriptor polls as an error,
		// which would mark the file "not pollable" for good.
		f := os.NewFile(uintptr(fd), "tun:"+dc.name)
		if err := configureDevice(dc); err != nil {
			f.Close()
			return err
		}
		tun = f
		return nil
	})
	return tun, err
}

func tunSetIff(fd int, name string, flags uint16) error {
	var ifr struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	if len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("device name %q too long", name)
	}
	copy(ifr.name[:], name)
	ifr.flags = flags
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return errno
	}
	return nil
}

// configureDevice runs on a thread inside the sandbox's namespace.
func configureDevice(dc deviceConfig) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bringing lo up: %w", err)
		}
	}
	link, err := h.LinkByName(dc.name)
	if err != nil {
		return fmt.Errorf("device %q: %w", dc.name, err)
	}
	if err := h.LinkSetMTU(link, dc.mtu); err != nil {
		return fmt.Errorf("mtu %d on %q: %w", dc.mtu, dc.name, err)
	}
	if dc.txQLen > 0 {
		if err := h.LinkSetTxQLen(link, dc.txQLen); err != nil {
			return fmt.Errorf("txqueuelen on %q: %w", dc.name, err)
		}
	}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: prefixNet(dc.addr4)}); err != nil {
		return fmt.Errorf("address %s on %q: %w", dc.addr4, dc.name, err)
	}
	if dc.addr6.IsValid() {
		// No duplicate address detection: nothing else is on this link,
		// and DAD would hold the address back for a second or more.
		a := &netlink.Addr{IPNet: prefixNet(dc.addr6), Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(link, a); err != nil {
			return fmt.Errorf("address %s on %q: %w", dc.addr6, dc.name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing %q up: %w", dc.name, err)
	}
	idx := link.Attrs().Index
	if err := h.RouteAdd(&netlink.Route{
		LinkIndex: idx,
		Dst:       &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
		Gw:        dc.gateway4.AsSlice(),
	}); err != nil {
		return fmt.Errorf("default route via %s: %w", dc.gateway4, err)
	}
	if dc.addr6.IsValid() {
		if err := h.RouteAdd(&netlink.Route{
			LinkIndex: idx,
			Dst:       &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
			Gw:        dc.gateway6.AsSlice(),
		}); err != nil {
			return fmt.Errorf("default route via %s: %w", dc.gateway6, err)
		}
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
