package app

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/kafkaio"
)

// newKafkaClient builds the Kafka client from the kafka section: brokers, client ID, TLS and
// SASL for every connection.
func newKafkaClient(cfg *Config, reg prometheus.Registerer, log logrus.FieldLogger) (*kafkaio.Client, error) {
	tlsCfg, err := cfg.Kafka.TLS.config()
	if err != nil {
		return nil, err
	}
	mech, err := cfg.Kafka.SASL.mechanism()
	if err != nil {
		return nil, err
	}
	if cfg.Kafka.TLS.InsecureSkipVerify {
		log.Warn("kafka.tls.insecure_skip_verify is true: the brokers' certificates are not verified, so anyone on the network path can impersonate them")
	}
	if mech != nil && tlsCfg == nil && cfg.Kafka.SASL.Mechanism == saslPlain {
		log.Warn("kafka.sasl.mechanism PLAIN without kafka.tls: the password crosses the network in clear text")
	}
	topics := append([]string{cfg.Kafka.OutcomesTopic, cfg.Kafka.DeadLetterTopic, cfg.Kafka.DelayTopic}, cfg.Kafka.EventsTopic...)
	return kafkaio.New(kafkaio.Config{
		Brokers: cfg.Kafka.Brokers, ClientID: cfg.Kafka.ClientID, TLS: tlsCfg, SASL: mech, SASLUser: cfg.Kafka.SASL.Username,
		Topics: topics,
	}, reg, log)
}

// ensureTopics checks, before joining the group, that every topic the processor reads or writes
// exists. kafka-go hides a missing topic: a group subscribed to one gets no partitions at all
// (for every topic); a typo would look like an idle system. The check never creates a topic;
// with kafka.create_topics the outcome, dead-letter and delay topics are created when missing
// (with the first events topic's partition count; the dead-letter topic with one), for local and
// test setups. Events topics are the producers' and never created.
func ensureTopics(ctx context.Context, kc *kafkaio.Client, cfg *Config, log logrus.FieldLogger) error {
	k := cfg.Kafka
	have, err := kc.Topics(ctx, append(slices.Clone(k.EventsTopic), k.OutcomesTopic, k.DeadLetterTopic, k.DelayTopic)...)
	if err != nil {
		return fmt.Errorf("kafka: checking the topics: %w", err)
	}
	for _, t := range k.EventsTopic {
		if _, ok := have[t]; !ok {
			return fmt.Errorf("kafka.events_topic: topic %q does not exist (wxnotify never creates the events topics)", t)
		}
	}
	events := have[k.EventsTopic[0]].Partitions
	var create []kafkaio.TopicSpec
	var missing []string
	for _, w := range []struct {
		key, topic string
		parts      int
	}{{"kafka.outcomes_topic", k.OutcomesTopic, events}, {"kafka.dead_letter_topic", k.DeadLetterTopic, 1}, {"kafka.delay_topic", k.DelayTopic, events}} {
		if _, ok := have[w.topic]; ok {
			continue
		}
		if k.CreateTopics {
			create = append(create, kafkaio.TopicSpec{Name: w.topic, Partitions: w.parts, ReplicationFactor: -1})
			continue
		}
		missing = append(missing, fmt.Sprintf("%s: topic %q does not exist; create it (kafka-topics.sh --bootstrap-server %s --create --topic %s --partitions %d) or, for local and test setups, set kafka.create_topics: true",
			w.key, w.topic, k.Brokers[0], w.topic, w.parts))
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s", strings.Join(missing, "\n"))
	}
	if len(create) == 0 {
		return nil
	}
	if err := kc.CreateTopics(ctx, create...); err != nil {
		return fmt.Errorf("kafka.create_topics: %w", err)
	}
	for _, c := range create {
		log.WithFields(logrus.Fields{"topic": c.Name, "partitions": c.Partitions}).Info("created a missing topic (kafka.create_topics)")
	}
	return nil
}
