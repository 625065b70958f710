package network

import (
	"fmt"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// debugStack describes the netstack's endpoints and a few counters.
func debugStack(l *Link) string {
	var b strings.Builder
	states := map[string]int{}
	for _, rep := range l.stack.RegisteredEndpoints() {
		ep, ok := rep.(tcpip.Endpoint)
		if !ok {
			continue
		}
		st := tcp.EndpointState(ep.State()).String()
		states[st]++
		if info, ok := ep.Info().(*stack.TransportEndpointInfo); ok && st != "ESTABLISHED" {
			fmt.Fprintf(&b, "  ep %s %v:%d <- %v:%d\n", st, info.ID.LocalAddress, info.ID.LocalPort, info.ID.RemoteAddress, info.ID.RemotePort)
		}
	}
	fmt.Fprintf(&b, "  states %v cleanup %d\n", states, len(l.stack.CleanupEndpoints()))
	s := l.stack.Stats().TCP
	fmt.Fprintf(&b, "  tcp: forwardMaxInFlightDrop %d listenOverflowSynDrop %d segmentsAckedWithDSACK %d invalidSegments %d resetsReceived %d\n",
		s.ForwardMaxInFlightDrop.Value(), s.ListenOverflowSynDrop.Value(), s.SegmentsAckedWithDSACK.Value(), s.InvalidSegmentsReceived.Value(), s.ResetsReceived.Value())
	ip := l.stack.Stats().IP
	fmt.Fprintf(&b, "  ip: received %d delivered %d malformed %d invalidDst %d\n", ip.PacketsReceived.Value(), ip.PacketsDelivered.Value(), ip.MalformedPacketsReceived.Value(), ip.InvalidDestinationAddressesReceived.Value())
	return b.String()
}
