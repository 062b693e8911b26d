package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// world is what every run needs: the broker, the simulator (secrets are sentinels), the rule
// file, and a fleet of processor members configured for them.
type world struct {
	broker    *broker
	sim       *wechatsim.Server
	fleet     *fleet
	rulesPath string
}

// newWorld starts the broker and the simulator (recording deliveries unless noRecord) under dir.
// Close it with close, also after an error.
func newWorld(dir string, p params, noRecord bool) (w *world, err error) {
	w = &world{rulesPath: filepath.Join(dir, "chaos.yaml")}
	defer func() {
		if err != nil {
			w.close(0)
		}
	}()
	// The secrets of the chaos world are sentinels: a scan of everything the processor wrote
	// afterwards must not find one.
	secrets := map[string]string{
		weappSecret:   sentinel + "-APPSECRET-weapp-" + randomHex(8),
		mpSecret:      sentinel + "-APPSECRET-mp-" + randomHex(8),
		kafkaPassword: sentinel + "-SASL-" + randomHex(8),
	}
	if w.broker, err = startBroker(filepath.Join(dir, "kafka"), secrets[kafkaPassword]); err != nil {
		return nil, err
	}
	w.sim, err = wechatsim.Start(wechatsim.Config{
		Accounts:    map[string]string{weappAppID: secrets[weappSecret], mpAppID: secrets[mpSecret]},
		Latency:     p.Latency,
		TokenPrefix: sentinel + "-TOKEN-",
		NoRecord:    noRecord,
	})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(w.rulesPath, chaosRules, 0o644); err != nil {
		return nil, err
	}
	logDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	env := []string{weappSecret + "=" + secrets[weappSecret], mpSecret + "=" + secrets[mpSecret], kafkaPassword + "=" + secrets[kafkaPassword]}
	w.fleet, err = newFleet(logDir, env, func(ops string) string {
		return processorYAML(p, w.broker.addr, w.sim.URL(), w.rulesPath, ops)
	})
	return w, err
}

// close stops the members (each gracefully within grace), the simulator and the broker.
func (w *world) close(grace time.Duration) {
	if w.fleet != nil {
		w.fleet.close(grace)
	}
	if w.sim != nil {
		w.sim.Close()
	}
	if w.broker != nil {
		w.broker.close()
	}
}

// runner is one scenario run: its world, what has been read back, and the faults injected so
// far. The fault driver's goroutine alone uses rng.
type runner struct {
	*world
	p      params
	sc     *scenario
	seed   uint64
	rng    *mrand.Rand
	led    *ledger
	faults faultLog
}

// resolve fills the params the scenario decides when they are left 0.
func resolve(sc *scenario, p params) params {
	if p.Latency == 0 {
		p.Latency = sc.latency
	}
	if p.Faults == 0 {
		p.Faults = sc.faults
	}
	return p
}

// runScenario runs sc once (p resolved, seed) with its broker data and member logs under dir,
// and checks what happened. progress, if not nil, gets a line every 5 s.
func runScenario(ctx context.Context, sc *scenario, p params, seed uint64, dir string, progress io.Writer) (*result, error) {
	p = resolve(sc, p)
	w, err := newWorld(dir, p, false)
	if err != nil {
		return nil, err
	}
	grace := p.DrainTimeout + 10*time.Second
	defer w.close(grace)
	r := &runner{world: w, p: p, sc: sc, seed: seed, rng: mrand.New(mrand.NewPCG(seed, 0xc4a05))}

	malformed := 0.0
	if sc.malformed {
		malformed = p.MalformedRate
	}
	evs := generate(p.Events, p.Users, malformed, seed)
	expect, err := expectations(evs)
	if err != nil {
		return nil, err
	}
	prod, err := newProducer(r.broker)
	if err != nil {
		return nil, err
	}
	err = produce(ctx, prod, evs)
	prod.Close()
	if err != nil {
		return nil, err
	}

	r.led = newLedger(evs, expect)
	rd, err := startReader(r.broker, r.led.record)
	if err != nil {
		return nil, err
	}
	defer rd.close()

	t0 := time.Now()
	if progress != nil {
		fmt.Fprintf(progress, "  %s: %d events produced; starting %d members\n", sc.name, len(evs), sc.members)
	}
	for slot := range sc.members {
		if _, err := r.fleet.start(slot); err != nil {
			return nil, err
		}
	}
	res, err := r.wait(ctx, t0, progress)
	if err != nil {
		return nil, err
	}

	// Everything in: scrape the members, stop them gracefully, read the outcome topic to its end.
	metricSecrets := scrapeSecrets(ctx, r.fleet.running())
	r.fleet.close(grace)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	readerErr := rd.catchUp(cctx)
	cancel()

	if progress != nil {
		fmt.Fprintf(progress, "  %s: members stopped and outcomes read %.1fs after the last one arrived\n", sc.name, time.Since(t0).Seconds()-res.Elapsed.Seconds())
	}
	final := check(r.led, r.sim.Deliveries(), r.faults.snapshot(), t0)
	final.Scenario, final.Seed, final.Command = sc.name, seed, p.command(sc.name, seed)
	final.Elapsed, final.TimedOut, final.Stall, final.malformed = res.Elapsed, res.TimedOut, res.Stall, sc.malformed
	final.Deduplicated = r.sim.Stats().Deduplicated["template.send"]
	if metricSecrets > 0 {
		final.Secrets["metrics"] += metricSecrets
	}
	logSecrets, races := scanLogs(r.fleet.logFiles())
	if logSecrets > 0 {
		final.Secrets["logs"] += logSecrets
	}
	final.Races = races
	final.Unclean = r.fleet.uncleanStops()
	final.Misses = sc.misses(p, final)
	if readerErr != nil {
		final.Misses = append(final.Misses, readerErr.Error())
	}
	return final, nil
}

// wait runs the fault driver until every expected notification has its outcome or the timeout
// passes; the driver is stopped and joined before it returns.
func (r *runner) wait(ctx context.Context, t0 time.Time, progress io.Writer) (*result, error) {
	dctx, stopDriver := context.WithCancel(ctx)
	defer stopDriver()
	driverDone := make(chan error, 1)
	if r.sc.drive != nil {
		go func() { driverDone <- r.sc.drive(r, dctx) }()
	} else {
		driverDone <- nil
	}
	joined := false
	join := func() error {
		stopDriver()
		if joined {
			return nil
		}
		joined = true
		return <-driverDone
	}
	defer join()

	timeout := time.NewTimer(r.p.Timeout)
	defer timeout.Stop()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	res := &result{}
	for {
		select {
		case <-r.led.allDone:
		case <-timeout.C:
			res.TimedOut = true
			res.Stall = r.broker.groupState(groupID)
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-driverDone:
			joined = true
			if err != nil {
				return nil, fmt.Errorf("%s: fault driver: %w", r.sc.name, err)
			}
			driverDone = nil // the plan has run; wait for the outcomes
			continue
		case <-tick.C:
			if progress != nil {
				done, want := r.led.done()
				fmt.Fprintf(progress, "  %s %5.0fs: %d/%d outcomes, %d members running, %d faults\n",
					r.sc.name, time.Since(t0).Seconds(), done, want, len(r.fleet.running()), len(r.faults.snapshot()))
			}
			continue
		}
		break
	}
	res.Elapsed = time.Since(t0)
	if err := join(); err != nil {
		return nil, fmt.Errorf("%s: fault driver: %w", r.sc.name, err)
	}
	return res, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (Go >= 1.24)
	return hex.EncodeToString(b)
}
