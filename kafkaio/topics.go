package kafkaio

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// TopicInfo is what the cluster's metadata says about an existing topic.
type TopicInfo struct {
	Partitions int
}

// Topics returns the topics among names that exist. A missing topic is absent from the map; a
// topic the client may not describe is an error. It never creates a topic, whatever the
// broker's auto.create.topics.enable says.
func (c *Client) Topics(ctx context.Context, names ...string) (map[string]TopicInfo, error) {
	res, err := c.metadata(ctx, names)
	if err != nil {
		return nil, err
	}
	out := make(map[string]TopicInfo, len(res.Topics))
	for _, t := range res.Topics {
		switch e := kafka.Error(t.ErrorCode); {
		case t.ErrorCode == 0:
		case errors.Is(e, kafka.UnknownTopicOrPartition):
			continue
		default:
			return nil, fmt.Errorf("topic %q: %w", t.Name, e)
		}
		out[t.Name] = TopicInfo{Partitions: len(t.Partitions)}
	}
	return out, nil
}

// TopicSpec is a topic to create.
type TopicSpec struct {
	Name              string
	Partitions        int
	ReplicationFactor int // -1: the broker's default
}

// CreateTopics creates the topics. A topic that exists already (created meanwhile by another
// replica) is not an error.
func (c *Client) CreateTopics(ctx context.Context, specs ...TopicSpec) error {
	req := &kafka.CreateTopicsRequest{}
	for _, s := range specs {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: s.Name, NumPartitions: s.Partitions, ReplicationFactor: s.ReplicationFactor})
	}
	res, err := c.kc.CreateTopics(ctx, req)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range specs {
		if e := res.Errors[s.Name]; e != nil && !errors.Is(e, kafka.TopicAlreadyExists) {
			errs = append(errs, fmt.Errorf("create topic %q: %w", s.Name, e))
		}
	}
	return errors.Join(errs...)
}
