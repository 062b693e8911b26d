package processor

import (
	"context"
	"time"

	"github.com/segmentio/kafka-go"
)

// heartbeatWhileDraining keeps gen's membership alive while its revoked partitions drain: it
// heartbeats at once and then every HeartbeatInterval until the returned stop is called. The
// coordinator answers REBALANCE_IN_PROGRESS, which is expected: the heartbeat still counts, so
// the group waits (up to the rebalance timeout) for this member to finish, commit and rejoin
// instead of evicting it after the session timeout.
func (p *Processor) heartbeatWhileDraining(gen *kafka.Generation) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(p.cfg.HeartbeatInterval)
		defer t.Stop()
		for {
			hctx, hcancel := context.WithTimeout(ctx, p.cfg.HeartbeatInterval)
			_, err := p.client.Heartbeat(hctx, &kafka.HeartbeatRequest{GroupID: gen.GroupID, GenerationID: gen.ID, MemberID: gen.MemberID})
			hcancel()
			if err != nil && ctx.Err() == nil {
				p.log.WithError(err).WithField("generation", gen.ID).Debug("heartbeat while draining")
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// brokerClient builds a client with the dialer's TLS and SASL settings, on a transport of its
// own: for group requests outside kafka-go's ConsumerGroup, and for event fetches.
func brokerClient(brokers []string, d *kafka.Dialer) *kafka.Client {
	tr := &kafka.Transport{}
	if d != nil {
		tr.TLS, tr.SASL, tr.ClientID = d.TLS, d.SASLMechanism, d.ClientID
	}
	return &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
}

// closeIdle closes the clients' pooled connections.
func closeIdle(clients ...*kafka.Client) {
	for _, c := range clients {
		if t, ok := c.Transport.(*kafka.Transport); ok {
			t.CloseIdleConnections()
		}
	}
}
