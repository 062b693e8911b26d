package processor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// ensureTopics checks, before joining the group, that every topic the processor reads or writes
// exists. kafka-go hides a missing topic: a group subscribed to one gets no partitions at all
// (for every topic), and a writer retries it forever; a typo would look like an idle system. The
// delay topic belongs to wxnotify, so it is created when missing (with the partition count of
// the first events topic); the others are the user's and a missing one is a startup error.
func (p *Processor) ensureTopics(ctx context.Context) error {
	type want struct{ key, topic string }
	wants := []want{}
	for _, t := range p.cfg.Topics {
		wants = append(wants, want{"kafka.events_topic", t})
	}
	wants = append(wants, want{"kafka.outcomes_topic", p.cfg.OutcomesTopic}, want{"kafka.dead_letter_topic", p.cfg.DeadLetterTopic})
	partitions, err := p.readPartitions(ctx, append(append([]string{}, p.cfg.Topics...), p.cfg.OutcomesTopic, p.cfg.DeadLetterTopic, p.cfg.DelayTopic))
	if err != nil {
		// The brokers may be down; the group and the writer retry on their own. Say so and go on.
		p.log.WithError(err).Warn("cannot check that the topics exist; going on")
		return nil
	}
	for _, w := range wants {
		if len(partitions[w.topic]) == 0 {
			return fmt.Errorf("%s: topic %q does not exist", w.key, w.topic)
		}
	}
	if p.cfg.DelayTopic == "" || len(partitions[p.cfg.DelayTopic]) > 0 {
		return nil
	}
	// As many partitions as the events it delays, and as durable.
	events := partitions[p.cfg.Topics[0]]
	n, replicas := len(events), max(len(events[0].Replicas), 1)
	if err := p.createTopic(ctx, p.cfg.DelayTopic, n, replicas); err != nil {
		return fmt.Errorf("kafka.delay_topic: topic %q does not exist and could not be created (%v); create it with %d partitions", p.cfg.DelayTopic, err, n)
	}
	p.log.WithField("topic", p.cfg.DelayTopic).WithField("partitions", n).Info("created the delay topic")
	return nil
}

// readPartitions returns the partitions of each topic (none: the topic does not exist).
func (p *Processor) readPartitions(ctx context.Context, topics []string) (map[string][]kafka.Partition, error) {
	conn, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	out := map[string][]kafka.Partition{}
	for _, t := range topics {
		if t == "" {
			continue
		}
		parts, err := conn.ReadPartitions(t)
		if err != nil && !errors.Is(err, kafka.UnknownTopicOrPartition) {
			return nil, err
		}
		out[t] = parts
	}
	return out, nil
}

func (p *Processor) createTopic(ctx context.Context, topic string, partitions, replicas int) error {
	conn, err := p.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctrl, err := conn.Controller()
	if err != nil {
		return err
	}
	cc, err := p.dialer().DialContext(ctx, "tcp", fmt.Sprintf("%s:%d", ctrl.Host, ctrl.Port))
	if err != nil {
		return err
	}
	defer cc.Close()
	err = cc.CreateTopics(kafka.TopicConfig{Topic: topic, NumPartitions: partitions, ReplicationFactor: replicas})
	if errors.Is(err, kafka.TopicAlreadyExists) {
		return nil // another replica created it first
	}
	return err
}

func (p *Processor) dialer() *kafka.Dialer {
	if p.cfg.Dialer != nil {
		return p.cfg.Dialer
	}
	return kafka.DefaultDialer
}

// dial connects to the first reachable broker.
func (p *Processor) dial(ctx context.Context) (*kafka.Conn, error) {
	var lastErr error
	for _, b := range p.cfg.Brokers {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := p.dialer().DialContext(cctx, "tcp", b)
		cancel()
		if err == nil {
			return conn, nil
		}
		lastErr = err
	}
	return nil, lastErr
}
