package app

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// testCA is a certificate authority made for one test, with a server certificate for 127.0.0.1.
type testCA struct {
	caFile string
	server tls.Certificate
}

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	skey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	sder, err := x509.CreateCertificate(rand.Reader, stmpl, ca, &skey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), name+"-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return testCA{caFile: caFile, server: tls.Certificate{Certificate: [][]byte{sder}, PrivateKey: skey}}
}

const (
	kafkaTestUser     = "wxnotify"
	kafkaTestPassword = "SENTINEL-kafka-password-7d1e"
)

// newSecureHarness starts a broker that only speaks TLS (its certificate from ca) and SCRAM-SHA-512,
// and points the processor's config at it with the given password.
func newSecureHarness(t *testing.T, ca testCA, password string) *harness {
	t.Helper()
	h := newHarness(t, wechatsim.Config{},
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{ca.server}, MinVersion: tls.VersionTLS12}),
		kfake.EnableSASL(), kfake.Superuser(saslSCRAMSHA512, kafkaTestUser, kafkaTestPassword))
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(ca.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	h.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if h.sasl, err = scram.Mechanism(scram.SHA512, kafkaTestUser, kafkaTestPassword); err != nil {
		t.Fatal(err)
	}
	h.cfg.Kafka.TLS = KafkaTLSConfig{Enabled: true, CAFile: ca.caFile}
	h.cfg.Kafka.SASL = KafkaSASLConfig{Mechanism: saslSCRAMSHA512, Username: kafkaTestUser, Password: password}
	if err := h.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return h
}

// Against a broker that requires TLS and SCRAM-SHA-512, everything flows: the group, fetches,
// commits, outcome writes and the delay topic all connect with kafka.tls and kafka.sasl.
func TestTLSAndSCRAM(t *testing.T) {
	h := newSecureHarness(t, newTestCA(t, "kafka"), kafkaTestPassword)
	h.start()
	samples := h.sampleEvents()
	h.produce("events", samples...)
	outs := h.outcomes(12, 30*time.Second)
	if len(outs) != 12 {
		t.Fatalf("%d outcomes, want 12", len(outs))
	}
	waitFor(t, 20*time.Second, "commits past every sample", func() bool { return sum(h.committed()) == int64(len(samples)) })
	if strings.Contains(h.logBuf.String(), kafkaTestPassword) {
		t.Fatal("the log contains the Kafka password")
	}
}

// A wrong password stops the start within 10 s with an error naming kafka.sasl, and neither
// the error nor the log contains the password.
func TestWrongKafkaPasswordFailsStart(t *testing.T) {
	const wrong = "SENTINEL-wrong-password-4b2a"
	h := newSecureHarness(t, newTestCA(t, "kafka"), wrong)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := Run(ctx, h.cfg, Options{Log: h.log, Rules: h.set, Listener: newLocalListener(t)})
	if err == nil || !strings.Contains(err.Error(), `kafka.sasl: authentication as "wxnotify" with SCRAM-SHA-512 failed`) {
		t.Fatalf("Run = %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("Run took %s to refuse the password, want under 10s", took)
	}
	for _, s := range []string{err.Error(), h.logBuf.String()} {
		if strings.Contains(s, wrong) || strings.Contains(s, kafkaTestPassword) {
			t.Fatalf("a password leaked: %s", s)
		}
	}
}

// A CA that did not sign the broker's certificate stops the start with an error naming
// kafka.tls.ca_file.
func TestUntrustedBrokerCertificateFailsStart(t *testing.T) {
	h := newSecureHarness(t, newTestCA(t, "kafka"), kafkaTestPassword)
	h.cfg.Kafka.TLS.CAFile = newTestCA(t, "other").caFile
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := Run(ctx, h.cfg, Options{Log: h.log, Rules: h.set, Listener: newLocalListener(t)})
	if err == nil || !strings.Contains(err.Error(), "kafka.tls.ca_file: the broker's certificate is not signed by a trusted CA (kafka.tls.ca_file)") {
		t.Fatalf("Run = %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("Run took %s to refuse the certificate", took)
	}
}
