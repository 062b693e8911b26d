package app

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// SASL mechanisms of kafka.sasl.mechanism.
const (
	saslPlain       = "PLAIN"
	saslSCRAMSHA256 = "SCRAM-SHA-256"
	saslSCRAMSHA512 = "SCRAM-SHA-512"
)

func (t KafkaTLSConfig) validate() []error {
	var errs []error
	if !t.Enabled {
		for _, kv := range [][2]string{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"server_name", t.ServerName}} {
			if kv[1] != "" {
				errs = append(errs, fmt.Errorf("kafka.tls.%s: set, but kafka.tls.enabled is false", kv[0]))
			}
		}
		if t.InsecureSkipVerify {
			errs = append(errs, errors.New("kafka.tls.insecure_skip_verify: set, but kafka.tls.enabled is false"))
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, errors.New("kafka.tls.cert_file: cert_file and key_file go together (mutual TLS)"))
	}
	return errs
}

// config returns the TLS configuration of every Kafka connection, nil when TLS is off. It
// reads and parses the files, so its errors name the key of a file that is missing or wrong.
func (t KafkaTLSConfig) config() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka.tls.ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka.tls.ca_file: %s holds no PEM certificate", t.CAFile)
		}
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka.tls.cert_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func (s KafkaSASLConfig) validate() []error {
	var errs []error
	switch s.Mechanism {
	case "":
		if s.Username != "" || s.Password != "" || s.PasswordFile != "" {
			errs = append(errs, errors.New("kafka.sasl.mechanism: required with a username or password (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"))
		}
		return errs
	case saslPlain, saslSCRAMSHA256, saslSCRAMSHA512:
	default:
		errs = append(errs, unknownMechanism(s.Mechanism))
	}
	if s.Username == "" {
		errs = append(errs, errors.New("kafka.sasl.username: empty (set the environment variable it names)"))
	}
	switch {
	case s.Password != "" && s.PasswordFile != "":
		errs = append(errs, errors.New("kafka.sasl.password: password and password_file are exclusive"))
	case s.Password == "" && s.PasswordFile == "":
		errs = append(errs, errors.New("kafka.sasl.password: empty (set the environment variable it names, or password_file)"))
	}
	return errs
}

// mechanism returns the SASL mechanism of every Kafka connection, nil without SASL.
func (s KafkaSASLConfig) mechanism() (sasl.Mechanism, error) {
	switch s.Mechanism {
	case "":
		return nil, nil
	case saslPlain:
		return plain.Mechanism{Username: s.Username, Password: s.Password}, nil
	case saslSCRAMSHA256, saslSCRAMSHA512:
		algo := scram.SHA256
		if s.Mechanism == saslSCRAMSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, s.Username, s.Password)
		if err != nil {
			return nil, fmt.Errorf("kafka.sasl: %w", err)
		}
		return m, nil
	}
	return nil, unknownMechanism(s.Mechanism)
}

func unknownMechanism(m string) error {
	return fmt.Errorf("kafka.sasl.mechanism: %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", m)
}
