package kafkaconn

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	meta "github.com/segmentio/kafka-go/protocol/metadata"
	"github.com/segmentio/kafka-go/protocol/produce"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func cluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(2, "out")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// metadata asks conn for the topic "out" and checks the answer names it with its partitions.
func metadata(t *testing.T, conn *Conn) {
	t.Helper()
	m, err := conn.RoundTrip(ctx(t), &meta.Request{TopicNames: []string{"out"}})
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	res, ok := m.(*meta.Response)
	if !ok || len(res.Topics) != 1 || res.Topics[0].Name != "out" || len(res.Topics[0].Partitions) != 2 {
		t.Fatalf("metadata answer %+v, want topic out with 2 partitions", m)
	}
}

// Requests go out with the negotiated API versions and come back decoded, one after another
// on the same connection.
func TestRoundTrips(t *testing.T) {
	c := cluster(t)
	conn, err := Dialer{}.DialContext(ctx(t), c.ListenAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range 3 {
		metadata(t, conn)
	}
	if conn.Addr() != c.ListenAddrs()[0] {
		t.Errorf("Addr() = %q, want %q", conn.Addr(), c.ListenAddrs()[0])
	}
}

// The SASL exchange runs before the connection is handed out: the right credentials get a
// working connection, wrong ones an error from the dial, not from a later request.
func TestSASLPlain(t *testing.T) {
	c := cluster(t, kfake.EnableSASL(), kfake.Superuser("PLAIN", "wx", "s3cret"))
	addr := c.ListenAddrs()[0]

	conn, err := Dialer{SASL: plain.Mechanism{Username: "wx", Password: "s3cret"}}.DialContext(ctx(t), addr)
	if err != nil {
		t.Fatalf("dial with the right credentials: %v", err)
	}
	defer conn.Close()
	metadata(t, conn)

	conn, err = Dialer{SASL: plain.Mechanism{Username: "wx", Password: "wrong"}}.DialContext(ctx(t), addr)
	if err == nil {
		conn.Close()
		t.Fatal("dial with a wrong password succeeded")
	}
	if !errors.Is(err, kafka.SASLAuthenticationFailed) {
		t.Errorf("dial with a wrong password = %v, want kafka.SASLAuthenticationFailed", err)
	}
}

// FromTransport takes the transport's connection settings.
func TestFromTransport(t *testing.T) {
	mech := plain.Mechanism{Username: "u", Password: "p"}
	tlsCfg := &tls.Config{ServerName: "kafka.internal"}
	dialed := false
	dial := func(context.Context, string, string) (net.Conn, error) {
		dialed = true
		return nil, errors.New("test dialer")
	}
	d := FromTransport(&kafka.Transport{Dial: dial, TLS: tlsCfg, SASL: mech, ClientID: "wxnotify", DialTimeout: 3 * time.Second})
	if d.SASL != mech || d.ClientID != "wxnotify" || d.Timeout != 3*time.Second || d.TLS != tlsCfg {
		t.Errorf("FromTransport = %+v", d)
	}
	if _, err := d.DialContext(context.Background(), "127.0.0.1:1"); err == nil || !dialed {
		t.Errorf("DialContext = %v, dialed %v: want the transport's Dial used", err, dialed)
	}
	if d := FromTransport(nil); d.SASL != nil || d.TLS != nil {
		t.Errorf("FromTransport(nil) = %+v, want the defaults", d)
	}
}

// A cancelled context ends a round trip the broker is sitting on, and the connection, whose
// answer is now unread, is closed rather than reused.
func TestCancelInterruptsRoundTrip(t *testing.T) {
	c := cluster(t)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { time.Sleep(3 * time.Second) })
		return nil, nil, false
	})
	conn, err := Dialer{}.DialContext(ctx(t), c.ListenAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rctx, cancel := context.WithCancel(ctx(t))
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	req := &produce.Request{Acks: -1, Timeout: 5000, Topics: []produce.RequestTopic{{Topic: "out",
		Partitions: []produce.RequestPartition{{Partition: 0, RecordSet: protocol.RecordSet{Records: protocol.NewRecordReader(protocol.Record{Value: protocol.NewBytes([]byte("v"))})}}}}}}
	_, err = conn.RoundTrip(rctx, req)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("round trip error %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the cancelled round trip took %v; the broker sits on it for 3s", d)
	}
	if !conn.Closed() {
		t.Error("the connection stays open with an answer unread")
	}
	if _, err := conn.RoundTrip(ctx(t), &meta.Request{}); !errors.Is(err, ErrClosed) {
		t.Errorf("a round trip on the broken connection gave %v, want ErrClosed", err)
	}
}

// A broker that is not there fails the dial with its address in the error.
func TestDialFailureNamesTheBroker(t *testing.T) {
	c := cluster(t)
	addr := c.ListenAddrs()[0]
	c.Close()
	_, err := Dialer{Timeout: time.Second}.DialContext(ctx(t), addr)
	if err == nil {
		t.Fatal("dial to a closed broker succeeded")
	}
	if want := addr; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the broker %s", err, want)
	}
}
