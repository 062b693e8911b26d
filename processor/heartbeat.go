package processor

import (
	"context"
	"errors"
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
			res, err := p.client.Heartbeat(hctx, &kafka.HeartbeatRequest{GroupID: gen.GroupID, GenerationID: gen.ID, MemberID: gen.MemberID})
			hcancel()
			if err == nil {
				err = res.Error // the coordinator's answer
			}
			switch {
			case err == nil || errors.Is(err, kafka.RebalanceInProgress) || ctx.Err() != nil:
			case errors.Is(err, kafka.UnknownMemberId) || errors.Is(err, kafka.IllegalGeneration):
				// Evicted after all: the partitions are someone else's now, so the work still
				// draining will be redone there. Heartbeating on cannot change that.
				p.log.WithError(err).WithField("generation", gen.ID).Warn("the group dropped this member while its revoked partitions drained; their unfinished work will be redone")
				return
			default:
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
// own. Its metadata cache, which the fetcher groups partitions by, refreshes every second
// (kafka-go's default is 6s): the cache is the only view of a moved leader.
func brokerClient(brokers []string, d *kafka.Dialer) *kafka.Client {
	tr := &kafka.Transport{MetadataTTL: time.Second}
	if d != nil {
		tr.TLS, tr.SASL, tr.ClientID = d.TLS, d.SASLMechanism, d.ClientID
	}
	return &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
}

// closeIdle closes the client's pooled connections.
func closeIdle(c *kafka.Client) {
	if t, ok := c.Transport.(*kafka.Transport); ok {
		t.CloseIdleConnections()
	}
}
