package processor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
	heartbeatapi "github.com/segmentio/kafka-go/protocol/heartbeat"

	"github.com/wxnotify/wxnotify/sink/kafkaconn"
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
		var conn *kafkaconn.Conn // to the group's coordinator
		defer func() {
			if conn != nil {
				conn.Close()
			}
		}()
		for {
			hctx, hcancel := context.WithTimeout(ctx, p.cfg.HeartbeatInterval)
			err := p.heartbeat(hctx, gen, &conn)
			hcancel()
			switch {
			case err == nil || errors.Is(err, kafka.RebalanceInProgress) || ctx.Err() != nil:
			case errors.Is(err, kafka.UnknownMemberId) || errors.Is(err, kafka.IllegalGeneration):
				// Evicted after all: the partitions are someone else's now, so the work still
				// draining will be redone there. Heartbeating on cannot change that.
				p.log.WithError(err).WithField("generation", gen.ID).Warn("the group dropped this member while its revoked partitions drained; their unfinished work will be redone")
				return
			default:
				p.log.WithError(err).WithField("generation", gen.ID).Warn("heartbeat while draining failed; retrying")
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

// heartbeat sends one heartbeat for gen to the group's coordinator over *conn, finding and
// dialing the coordinator first when *conn is nil. It returns the coordinator's error answer as
// a kafka.Error. kafka-go's Client.Heartbeat cannot be used: its heartbeat request lacks the
// Group method by which the Transport routes a request to the coordinator, so it went to any
// broker, and a broker that is not the coordinator answers NOT_COORDINATOR.
func (p *Processor) heartbeat(ctx context.Context, gen *kafka.Generation, conn **kafkaconn.Conn) error {
	if *conn == nil {
		res, err := p.client.FindCoordinator(ctx, &kafka.FindCoordinatorRequest{Key: gen.GroupID, KeyType: kafka.CoordinatorKeyTypeConsumer})
		if err == nil {
			err = res.Error
		}
		if err != nil {
			return fmt.Errorf("find the group coordinator: %w", err)
		}
		c, err := p.conns.DialContext(ctx, net.JoinHostPort(res.Coordinator.Host, strconv.Itoa(res.Coordinator.Port)))
		if err != nil {
			return err
		}
		*conn = c
	}
	m, err := (*conn).RoundTrip(ctx, &heartbeatapi.Request{GroupID: gen.GroupID, GenerationID: gen.ID, MemberID: gen.MemberID})
	if err != nil {
		*conn = nil // RoundTrip closed it
		return err
	}
	res, ok := m.(*heartbeatapi.Response)
	if !ok {
		return fmt.Errorf("heartbeat: unexpected response %T", m)
	}
	if res.ErrorCode == 0 {
		return nil
	}
	err = kafka.Error(res.ErrorCode)
	if errors.Is(err, kafka.NotCoordinatorForGroup) || errors.Is(err, kafka.GroupCoordinatorNotAvailable) {
		(*conn).Close() // the coordinator moved: find it again next time
		*conn = nil
	}
	return err
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
