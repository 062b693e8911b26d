// Package kafkaconn is a connection to one Kafka broker whose round trips run in the caller's
// goroutine.
//
// kafka-go's Transport hands every request to a goroutine that owns the connection and hands
// the answer back: two goroutine wake-ups per request, each of which may wake an idle thread.
// At a steady low event rate the fetcher and the outcome writer send a few hundred small
// requests a second, and those hand-offs were a large share of the processor's CPU. Both keep
// at most one request in flight per broker, so each can own a connection outright: the request
// is written and the answer read by the goroutine that needs it.
//
// Only the connection is ours. kafka-go's protocol layer negotiates API versions and encodes and
// decodes the messages; its SASL mechanisms authenticate. Dialer takes its settings (Dial, TLS,
// SASL, client ID, dial timeout) from the kafka.Transport the rest of the client uses, so a
// connection is set up exactly as the Transport sets up its own.
package kafkaconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/apiversions"
	"github.com/segmentio/kafka-go/protocol/saslauthenticate"
	"github.com/segmentio/kafka-go/protocol/saslhandshake"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/wxnotify/wxnotify/sink/rawsock"
)

// Dialer opens connections to brokers.
type Dialer struct {
	// Dial opens the TCP connection; nil = a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// TLS, when set, wraps the connection (ServerName defaults to the broker's host).
	TLS *tls.Config
	// SASL, when set, authenticates the connection.
	SASL sasl.Mechanism
	// ClientID is sent with every request.
	ClientID string
	// Timeout bounds the whole set-up: dial, TLS, API versions, SASL. Default 5s.
	Timeout time.Duration
}

// FromTransport is a Dialer with rt's connection settings when rt is a *kafka.Transport, and
// kafka-go's defaults otherwise.
func FromTransport(rt kafka.RoundTripper) Dialer {
	t, ok := rt.(*kafka.Transport)
	if !ok || t == nil {
		return Dialer{}
	}
	return Dialer{Dial: t.Dial, TLS: t.TLS, SASL: t.SASL, ClientID: t.ClientID, Timeout: t.DialTimeout}
}

// ErrClosed is returned by a round trip on a connection that was closed, or broken by an
// earlier failure.
var ErrClosed = errors.New("kafkaconn: connection closed")

// Conn is a connection to one broker. One goroutine at a time may use it. After any failed
// round trip it is closed: the answer may be half read, so the connection is unusable.
type Conn struct {
	pc     *protocol.Conn
	addr   string
	closed atomic.Bool
}

// DialContext connects to the broker at addr (host:port) and negotiates API versions, and SASL
// when configured.
func (d Dialer) DialContext(ctx context.Context, addr string) (*Conn, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := d.Dial
	if dial == nil {
		nd := &net.Dialer{}
		dial = nd.DialContext
	}
	nc, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial broker %s: %w", addr, err)
	}
	nc = rawsock.Wrap(nc) // see package rawsock: fetches and produces do not wake sysmon
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("broker address %q: %w", addr, err)
	}
	if d.TLS != nil {
		cfg := d.TLS
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		nc = tls.Client(nc, cfg)
	}
	c := &Conn{pc: protocol.NewConn(nc, d.ClientID), addr: addr}
	// The deadline covers the set-up round trips; a cancelled ctx ends them too.
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	err = c.setUp(ctx, host, port, d.SASL)
	stop()
	if err == nil {
		err = nc.SetDeadline(time.Time{})
	}
	if err != nil {
		nc.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, fmt.Errorf("connect to broker %s: %w", addr, err)
	}
	return c, nil
}

func (c *Conn) setUp(ctx context.Context, host, port string, mech sasl.Mechanism) error {
	m, err := c.pc.RoundTrip(new(apiversions.Request))
	if err != nil {
		return fmt.Errorf("api versions: %w", err)
	}
	res, ok := m.(*apiversions.Response)
	if !ok {
		return fmt.Errorf("api versions: unexpected response %T", m)
	}
	if res.ErrorCode != 0 {
		return fmt.Errorf("api versions: %w", kafka.Error(res.ErrorCode))
	}
	versions := make(map[protocol.ApiKey]int16, len(res.ApiKeys))
	for _, k := range res.ApiKeys {
		key := protocol.ApiKey(k.ApiKey)
		versions[key] = key.SelectVersion(k.MinVersion, k.MaxVersion)
	}
	c.pc.SetVersions(versions)
	if mech == nil {
		return nil
	}
	p, _ := strconv.Atoi(port)
	return authenticate(sasl.WithMetadata(ctx, &sasl.Metadata{Host: host, Port: p}), c.pc, mech)
}

// authenticate runs the SASL exchange, as kafka-go's Transport does.
func authenticate(ctx context.Context, pc *protocol.Conn, mech sasl.Mechanism) error {
	m, err := pc.RoundTrip(&saslhandshake.Request{Mechanism: mech.Name()})
	if err != nil {
		return fmt.Errorf("sasl handshake: %w", err)
	}
	if hs, ok := m.(*saslhandshake.Response); !ok {
		return fmt.Errorf("sasl handshake: unexpected response %T", m)
	} else if hs.ErrorCode != 0 {
		return fmt.Errorf("sasl handshake (%s): %w", mech.Name(), kafka.Error(hs.ErrorCode))
	}
	sess, state, err := mech.Start(ctx)
	if err != nil {
		return fmt.Errorf("sasl %s: %w", mech.Name(), err)
	}
	for done := false; !done; {
		m, err := pc.RoundTrip(&saslauthenticate.Request{AuthBytes: state})
		if err != nil {
			// How a broker refuses an opaque exchange: it closes the connection (kafka-go's
			// Transport checks io.EOF only; the close can also cut a response short).
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return kafka.SASLAuthenticationFailed
			}
			return fmt.Errorf("sasl authenticate: %w", err)
		}
		res, ok := m.(*saslauthenticate.Response)
		if !ok {
			return fmt.Errorf("sasl authenticate: unexpected response %T", m)
		}
		if res.ErrorCode != 0 {
			return fmt.Errorf("sasl authenticate: %w: %s", kafka.Error(res.ErrorCode), res.ErrorMessage)
		}
		if done, state, err = sess.Next(ctx, res.AuthBytes); err != nil {
			return fmt.Errorf("sasl %s: %w", mech.Name(), err)
		}
	}
	return nil
}

// Closed reports whether the connection was closed, or broken by a failed round trip.
func (c *Conn) Closed() bool { return c.closed.Load() }

// Addr is the broker's address, as dialed.
func (c *Conn) Addr() string { return c.addr }

// RoundTrip sends req and reads its answer, within ctx's deadline; ctx ending interrupts it.
// Any error closes the connection.
func (c *Conn) RoundTrip(ctx context.Context, req protocol.Message) (protocol.Message, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	if err := c.pc.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.pc.SetDeadline(time.Unix(1, 0)) })
	res, err := c.pc.RoundTrip(req)
	stop()
	if err != nil {
		c.Close()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return nil, err
	}
	return res, nil
}

// Close closes the connection. It may be called more than once, from any goroutine: a round
// trip in progress fails.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.pc.Close()
}
