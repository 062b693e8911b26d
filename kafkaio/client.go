// Package kafkaio owns wxnotify's Kafka I/O: connections, group membership, fetching, offset
// commits, record writes, metadata and topic checks. It is built on segmentio/kafka-go's own
// client: one kafka.Transport (connection pooling, TLS, SASL, the metadata cache and request
// routing) carries every request of the Client, its fetches, commits, heartbeats while
// draining, writes and admin requests; kafka-go's ConsumerGroup, which dials its coordinator
// connection itself, gets a kafka.Dialer with the same TLS, SASL and client ID. There are no
// connections, socket handling or protocol encoding of its own: requests are kafka-go's
// protocol types, sent through the Transport.
//
// Where kafka-go misbehaves, the workaround is small and names the behaviour it answers:
//   - commits go through the Transport (routed to the group's coordinator, found again for
//     every request), not over kafka-go's generation connection, which once broken fails every
//     commit until the generation ends (group.go);
//   - heartbeats while revoked partitions drain are addressed to the coordinator's own
//     connection pool, because kafka-go's heartbeat request lacks the group routing the
//     Transport uses for other group requests and would go to any broker, and the coordinator
//     is found again before each one, because kafka-go misreads the heartbeat's error code
//     (group.go).
//
// The package knows records, partitions and offsets; it does not know events, rules or
// outcomes. Package processor decides what to fetch, when a record is finished and what to
// commit.
package kafkaio

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	metaapi "github.com/segmentio/kafka-go/protocol/metadata"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/sirupsen/logrus"
)

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// Brokers are the bootstrap brokers (required).
	Brokers []string
	// ClientID is sent with every request. Default "wxnotify".
	ClientID string
	// TLS, when set, secures every connection.
	TLS *tls.Config
	// SASL, when set, authenticates every connection.
	SASL sasl.Mechanism
	// SASLUser names the SASL identity in errors (never the password). Optional.
	SASLUser string
	// Topics are the topics whose metadata the client keeps cached: every topic it reads or
	// writes. Routing a request to a partition's leader needs its topic here.
	Topics []string
}

const (
	// metadataTTL bounds the age of the cached metadata, which is how long a moved leader can
	// go unnoticed; kafka-go randomizes each refresh within it.
	metadataTTL = time.Second
	// dialTimeout bounds a connection's dial, TLS handshake and SASL exchange.
	dialTimeout = 10 * time.Second
)

// Client is the process's Kafka client. It is safe for concurrent use; Close releases its
// connections.
type Client struct {
	cfg     Config
	addr    net.Addr
	tr      *kafka.Transport
	kc      *kafka.Client
	dialer  *kafka.Dialer
	log     logrus.FieldLogger
	metrics *metrics
}

// New builds a Client. No connection is made until the first request. Metrics are registered
// on reg (nil: not registered).
func New(cfg Config, reg prometheus.Registerer, log logrus.FieldLogger) (*Client, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("kafka.brokers: at least one broker is required")
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "wxnotify"
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	tr := &kafka.Transport{
		Dial:           (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		DialTimeout:    dialTimeout,
		MetadataTTL:    metadataTTL,
		MetadataTopics: slices.Compact(slices.Sorted(slices.Values(cfg.Topics))),
		ClientID:       cfg.ClientID,
		TLS:            cfg.TLS,
		SASL:           cfg.SASL,
	}
	addr := kafka.TCP(cfg.Brokers...)
	return &Client{
		cfg:  cfg,
		addr: addr,
		tr:   tr,
		kc:   &kafka.Client{Addr: addr, Transport: tr},
		dialer: &kafka.Dialer{
			ClientID: cfg.ClientID, Timeout: dialTimeout, DualStack: true, KeepAlive: 30 * time.Second,
			TLS: cfg.TLS, SASLMechanism: cfg.SASL,
		},
		log:     log,
		metrics: m,
	}, nil
}

// Close closes the client's idle connections and those in use once they are released. Close
// the writers and stop the fetches first.
func (c *Client) Close() {
	c.tr.CloseIdleConnections()
}

// Check makes the first contact with the cluster and returns nil once the brokers answered a
// metadata request. Failures that retrying cannot fix (authentication, TLS verification) are
// returned at once, named by the config key to change; an unreachable cluster is retried with
// backoff, logged, until ctx ends.
func (c *Client) Check(ctx context.Context) error {
	backoff := 500 * time.Millisecond
	for {
		_, err := c.metadata(ctx, nil)
		if err == nil {
			return nil
		}
		if ferr := c.fatalConnError(err); ferr != nil {
			return ferr
		}
		if ctx.Err() != nil {
			return fmt.Errorf("kafka.brokers: cannot reach %s: %w", strings.Join(c.cfg.Brokers, ","), err)
		}
		c.log.WithError(err).WithField("brokers", c.cfg.Brokers).WithField("retry_in", backoff).Warn("kafka brokers unreachable; retrying")
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return fmt.Errorf("kafka.brokers: cannot reach %s: %w", strings.Join(c.cfg.Brokers, ","), err)
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// fatalConnError names the config key behind a connection failure that retrying cannot fix,
// or returns nil. The error text never contains the SASL password: kafka-go's errors do not
// carry it, and the mechanism's name and the user are all this adds.
func (c *Client) fatalConnError(err error) error {
	var (
		unknownCA  x509.UnknownAuthorityError
		hostname   x509.HostnameError
		invalid    x509.CertificateInvalidError
		verify     *tls.CertificateVerificationError
		recordHdr  tls.RecordHeaderError
		kerr       kafka.Error
		tlsAlert   tls.AlertError
		saslFailed = errors.Is(err, kafka.SASLAuthenticationFailed) || errors.Is(err, kafka.UnsupportedSASLMechanism) ||
			errors.Is(err, kafka.IllegalSASLState)
	)
	switch {
	case errors.As(err, &unknownCA) || errors.As(err, &verify) && errors.As(verify.Err, &unknownCA):
		return fmt.Errorf("kafka.tls.ca_file: the broker's certificate is not signed by a trusted CA (%s): %w", c.caSource(), err)
	case errors.As(err, &hostname):
		return fmt.Errorf("kafka.tls.server_name: the broker's certificate does not name the host: %w", err)
	case errors.As(err, &invalid) || errors.As(err, &verify):
		return fmt.Errorf("kafka.tls: the broker's certificate was refused: %w", err)
	case errors.As(err, &recordHdr):
		return fmt.Errorf("kafka.tls.enabled: the broker did not answer TLS (is this a plaintext listener?): %w", err)
	case errors.As(err, &tlsAlert):
		return fmt.Errorf("kafka.tls: the broker refused the TLS handshake (a client certificate in cert_file and key_file may be required): %w", err)
	case saslFailed:
		return fmt.Errorf("kafka.sasl: authentication as %q with %s failed: %w", c.cfg.SASLUser, c.cfg.SASL.Name(), err)
	case c.cfg.SASL != nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		// A broker ends a connection whose SASL exchange failed; before any request of ours
		// was answered, that is the refusal.
		return fmt.Errorf("kafka.sasl: authentication as %q with %s failed (the broker closed the connection): %w", c.cfg.SASLUser, c.cfg.SASL.Name(), err)
	case errors.As(err, &kerr) && (kerr == kafka.ClusterAuthorizationFailed || kerr == kafka.TopicAuthorizationFailed):
		return fmt.Errorf("kafka: not authorized: %w", err)
	}
	return nil
}

func (c *Client) caSource() string {
	if c.cfg.TLS != nil && c.cfg.TLS.RootCAs != nil {
		return "kafka.tls.ca_file"
	}
	return "the system roots"
}

// metadata returns the cached metadata of topics (nil: every cached topic). It never creates a
// topic: the request does not allow auto-creation, and kafka-go's Transport answers it from its
// cache.
func (c *Client) metadata(ctx context.Context, topics []string) (*metaapi.Response, error) {
	m, err := c.tr.RoundTrip(ctx, c.addr, &metaapi.Request{TopicNames: topics})
	if err != nil {
		return nil, err
	}
	res, ok := m.(*metaapi.Response)
	if !ok {
		return nil, fmt.Errorf("metadata: unexpected response %T", m)
	}
	return res, nil
}
