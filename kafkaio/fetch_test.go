package kafkaio

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// partitions returns partitions 0..n-1 of topic to fetch from offset.
func partitions(topic string, n int, offset int64) []*Partition {
	ps := make([]*Partition, n)
	for i := range ps {
		ps[i] = NewPartition(topic, i, offset)
	}
	return ps
}

// wantValues checks that partition p delivered exactly want, in order.
func wantValues(t *testing.T, col *collector, p int, want []string) {
	t.Helper()
	if got := col.values(p); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("partition %d delivered\n%v\nwant\n%v", p, got, want)
	}
}

// waitForRecords waits until each of the partitions ps delivered as many records as want lists
// for it.
func waitForRecords(t *testing.T, col *collector, want map[int][]string, what string, ps ...int) {
	t.Helper()
	waitFor(t, 10*time.Second, what, func() bool {
		for _, p := range ps {
			if len(col.values(p)) < len(want[p]) {
				return false
			}
		}
		return true
	})
}

// A fetch refused for one partition (its leader moving, here NOT_LEADER for a long while) hands
// that partition back to be routed again alone: the other partitions' records keep arriving,
// round after round, while it is refused, and its own arrive, in order, once it is served.
func TestFetchKeepsOtherPartitionsFlowingWhileOneFails(t *testing.T) {
	c := startCluster(t, kfake.SeedTopics(4, "ev"))
	cl, hook := newClient(t, c, []string{"ev"})
	f := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: "ev", Partitions: []int32{0}, Err: kerr.NotLeaderForPartition, Count: -1})
	col := fetch(t, cl, partitions("ev", 4, -1), FetchOptions{})
	pr := newKgo(t, c)
	want := map[int][]string{}
	// Rounds go on until partition 0 was refused, and routed again after a backoff, three times.
	for round := 0; round < 3 || f.Hits() < 3 && round < 100; round++ {
		for p := range 4 {
			vs := seq(fmt.Sprintf("p%d-r%d", p, round), 5)
			produce(t, pr, "ev", int32(p), vs...)
			want[p] = append(want[p], vs...)
		}
		waitForRecords(t, col, want, fmt.Sprintf("round %d of partitions 1-3 while partition 0 is refused", round), 1, 2, 3)
	}
	if n := len(col.values(0)); n != 0 || f.Hits() < 3 {
		t.Fatalf("partition 0 delivered %d records and was refused %d times: the fault did not hold it", n, f.Hits())
	}
	f.Remove()
	waitForRecords(t, col, want, "partition 0's records once it is served", 0)
	for p := range 4 {
		wantValues(t, col, p, want[p])
	}
	if logged(hook, logrus.WarnLevel, "routing the partition again") == nil {
		t.Error("no warning about the refused partition")
	}
}

// A partition's leader moves to another broker, again and again, while records are produced to
// every partition: the others keep flowing after each move, and every partition delivers its
// records once each, in order.
func TestFetchFollowsLeaderMoves(t *testing.T) {
	c := startCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(4, "ev"))
	cl, _ := newClient(t, c, []string{"ev"})
	col := fetch(t, cl, partitions("ev", 4, -1), FetchOptions{})
	pr := newKgo(t, c)
	want := map[int][]string{}
	for round := range 4 {
		if err := c.MoveTopicPartition("ev", 0, (c.LeaderFor("ev", 0)+1)%3); err != nil {
			t.Fatal(err)
		}
		for p := range 4 {
			vs := seq(fmt.Sprintf("p%d-r%d", p, round), 5)
			produce(t, pr, "ev", int32(p), vs...)
			want[p] = append(want[p], vs...)
		}
		waitForRecords(t, col, want, fmt.Sprintf("round %d of partitions 1-3 after partition 0 moved", round), 1, 2, 3)
	}
	waitForRecords(t, col, want, "partition 0's records", 0)
	for p := range 4 {
		wantValues(t, col, p, want[p])
	}
}

// An offset outside the log (below its start after retention or DeleteRecords, or above its end
// after the log lost its tail) is refused by the broker; the fetcher warns, naming the offset,
// the log's bounds and where it resumes, and resumes per FetchOptions.StartOffset, except that
// below the log start it always resumes at the log start.
func TestFetchOutOfRangeResumesPerPolicy(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from     int64
		deleteTo int64 // DeleteRecords below this offset first; 0: none
		policy   int64
		resume   int64
	}{
		{"below the log start, start at first", 2, 6, FirstOffset, 6},
		{"below the log start, start at last", 2, 6, LastOffset, 6},
		{"above the log end, start at first", 50, 0, FirstOffset, 0},
		{"above the log end, start at last", 50, 0, LastOffset, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, kfake.SeedTopics(1, "ev"))
			cl, hook := newClient(t, c, []string{"ev"})
			pr := newKgo(t, c)
			all := seq("v", 12)
			produce(t, pr, "ev", 0, all[:10]...)
			if tc.deleteTo > 0 {
				if err := c.DeleteRecords("ev", 0, tc.deleteTo); err != nil {
					t.Fatal(err)
				}
			}
			col := fetch(t, cl, []*Partition{NewPartition("ev", 0, tc.from)}, FetchOptions{StartOffset: tc.policy})
			var warning *logrus.Entry
			waitFor(t, 10*time.Second, "the warning about the offset outside the log", func() bool {
				warning = logged(hook, logrus.WarnLevel, "outside its log")
				return warning != nil
			})
			produce(t, pr, "ev", 0, all[10:]...) // after the fetcher repositioned
			waitFor(t, 10*time.Second, "the last record", func() bool {
				vs := col.values(0)
				return len(vs) > 0 && vs[len(vs)-1] == all[11]
			})
			wantValues(t, col, 0, all[tc.resume:])
			if warning.Data["offset"] != tc.from || warning.Data["resume_at"] != tc.resume {
				t.Errorf("warning fields %v, want offset %d and resume_at %d", warning.Data, tc.from, tc.resume)
			}
		})
	}
}

// Batches compressed with gzip, snappy, lz4 and zstd by another client (kgo) are read: values,
// keys and headers as written. The broker is checked to have received them compressed.
func TestFetchReadsCompressedBatches(t *testing.T) {
	codecs := []struct {
		name  string
		codec kgo.CompressionCodec
		attr  int16 // the codec's bits in a record batch's attributes
	}{
		{"gzip", kgo.GzipCompression(), 1},
		{"snappy", kgo.SnappyCompression(), 2},
		{"lz4", kgo.Lz4Compression(), 3},
		{"zstd", kgo.ZstdCompression(), 4},
	}
	c := startCluster(t, kfake.SeedTopics(int32(len(codecs)), "ev"))
	var mu sync.Mutex
	received := map[int32]map[int16]bool{} // partition -> codecs of the batches received
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		for _, rt := range req.(*kmsg.ProduceRequest).Topics {
			for _, rp := range rt.Partitions {
				var b kmsg.RecordBatch
				if err := b.ReadFrom(rp.Records); err == nil {
					if received[rp.Partition] == nil {
						received[rp.Partition] = map[int16]bool{}
					}
					received[rp.Partition][b.Attributes&0x07] = true
				}
			}
		}
		return nil, nil, false
	})
	cl, _ := newClient(t, c, []string{"ev"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, cc := range codecs {
		pr := newKgo(t, c, kgo.ProducerBatchCompression(cc.codec))
		var recs []*kgo.Record
		for j := range 50 {
			recs = append(recs, &kgo.Record{Topic: "ev", Partition: int32(i), Key: fmt.Appendf(nil, "k%d", j),
				Value:   fmt.Appendf(nil, `{"event_id":"%s-%03d","type":"order.paid","note":"%s"}`, cc.name, j, strings.Repeat("compressible ", 8)),
				Headers: []kgo.RecordHeader{{Key: "codec", Value: []byte(cc.name)}}})
		}
		if err := pr.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatalf("%s: %v", cc.name, err)
		}
	}
	col := fetch(t, cl, partitions("ev", len(codecs), -1), FetchOptions{})
	for i, cc := range codecs {
		waitFor(t, 10*time.Second, cc.name+" records", func() bool { return len(col.values(i)) >= 50 })
		msgs := col.messages(i)
		if len(msgs) != 50 {
			t.Errorf("%s: %d records, want 50", cc.name, len(msgs))
			continue
		}
		for j, m := range msgs {
			want := fmt.Sprintf(`{"event_id":"%s-%03d","type":"order.paid","note":"%s"}`, cc.name, j, strings.Repeat("compressible ", 8))
			if string(m.Value) != want || string(m.Key) != fmt.Sprintf("k%d", j) || len(m.Headers) != 1 || string(m.Headers[0].Value) != cc.name {
				t.Errorf("%s record %d: key %q value %q headers %v", cc.name, j, m.Key, m.Value, m.Headers)
				break
			}
		}
		mu.Lock()
		if got := received[int32(i)]; len(got) != 1 || !got[cc.attr] {
			t.Errorf("%s: the broker received batches with codecs %v, want only %d: the test proves nothing for it", cc.name, got, cc.attr)
		}
		mu.Unlock()
	}
}

// Two transactional producers (kgo) interleave their records in one partition: both abort, then
// one aborts while the other commits, then both commit. Fetching from the start or from inside
// any of the transactions, only the committed records are events; the aborted records and the
// six markers are handed on as Skip, so every offset up to the end passes and a commit can
// reach the log end.
func TestFetchSkipsInterleavedAbortedTransactions(t *testing.T) {
	c := startCluster(t, kfake.SeedTopics(1, "ev"))
	a := newKgo(t, c, kgo.TransactionalID("tx-a"))
	b := newKgo(t, c, kgo.TransactionalID("tx-b"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	begin := func(cl *kgo.Client) {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
	}
	send := func(cl *kgo.Client, v string) { produce(t, cl, "ev", 0, v) }
	end := func(cl *kgo.Client, commit bool) {
		if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	// Offsets: 0 a1 1 b1 2 a2 3 b2 4 abort(a) 5 abort(b) | 6 b3 7 a3 8 b4 9 a4 10 abort(b) 11 a5
	// 12 commit(a) | 13 a6 14 b5 15 commit(b) 16 commit(a).
	begin(a)
	begin(b)
	send(a, "a1-aborted")
	send(b, "b1-aborted")
	send(a, "a2-aborted")
	send(b, "b2-aborted")
	end(a, false)
	end(b, false)
	begin(a)
	begin(b)
	send(b, "b3-aborted")
	send(a, "a3")
	send(b, "b4-aborted")
	send(a, "a4")
	end(b, false)
	send(a, "a5")
	end(a, true)
	begin(a)
	begin(b)
	send(a, "a6")
	send(b, "b5")
	end(b, true)
	end(a, true)
	committed := map[int64]string{7: "a3", 9: "a4", 11: "a5", 13: "a6", 14: "b5"}
	const logEnd = 17
	if end := endOffsets(t, c, "ev", 1)[0]; end != logEnd {
		t.Fatalf("the log ends at %d, want %d: the producers did not interleave as planned", end, logEnd)
	}
	cl, _ := newClient(t, c, []string{"ev"})
	for _, from := range []int64{0, 2, 6, 8, 11} {
		col := fetch(t, cl, []*Partition{NewPartition("ev", 0, from)}, FetchOptions{})
		waitFor(t, 10*time.Second, fmt.Sprintf("every offset from %d to the end", from), func() bool {
			ms := col.messages(0)
			return len(ms) > 0 && ms[len(ms)-1].Offset == logEnd-1
		})
		var want []string
		for off := from; off < logEnd; off++ {
			if v, ok := committed[off]; ok {
				want = append(want, v)
			}
		}
		wantValues(t, col, 0, want)
		for i, m := range col.messages(0) {
			if m.Offset != from+int64(i) {
				t.Errorf("from %d: record %d has offset %d, want every offset once, in order", from, i, m.Offset)
				break
			}
		}
	}
}
