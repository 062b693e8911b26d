package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/rules"
)

// reloadDebounce is how long the rules path must be quiet before a reload: an editor's
// write-rename-chmod, a `cp` of several files or a ConfigMap's symlink swap is one reload.
const reloadDebounce = 200 * time.Millisecond

// reloader replaces the rule set when the rule files change or when asked to (SIGHUP). A reload
// loads and checks the whole new set first (LoadRules, the same checks as at startup); only a
// fully valid set replaces the current one, in one atomic swap of the ruleHolder, so every event
// is evaluated by exactly one set. An invalid set is logged problem by problem, as `check`
// prints them, and the current set keeps running.
type reloader struct {
	cfg    *Config
	holder *ruleHolder
	log    logrus.FieldLogger

	fromPath bool              // the rules were read from cfg.Rules.Path (not preloaded)
	w        *fsnotify.Watcher // nil when not watching
	dir      string
	relevant func(name string) bool

	info      *prometheus.GaugeVec
	succeeded prometheus.Gauge
	successAt prometheus.Gauge

	// installed, if set, is called after a reload installed a new set. Set it before run.
	installed func(*rules.Set)
	// failure is the last rejected reload, nil once a reload succeeds (/readyz shows it).
	failure atomic.Pointer[reloadFailure]
}

// reloadFailure is a rejected reload as /readyz shows it.
type reloadFailure struct {
	At       string   `json:"at"`       // RFC 3339
	Problems []string `json:"problems"` // as `wxnotify check` prints them, at most maxReadyProblems
}

// maxReadyProblems bounds the problems /readyz lists; the log has every one.
const maxReadyProblems = 20

// lastFailure returns the last rejected reload, nil if the last reload succeeded.
func (r *reloader) lastFailure() *reloadFailure { return r.failure.Load() }

func newReloader(cfg *Config, holder *ruleHolder, reg prometheus.Registerer, log logrus.FieldLogger) *reloader {
	r := &reloader{
		cfg: cfg, holder: holder, log: log,
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wxnotify_rules_info", Help: "The loaded rule set: version label, value = load time (unix seconds).",
		}, []string{"version"}),
		succeeded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxnotify_rules_last_reload_successful", Help: "1 if the last rules load or reload succeeded, 0 if it was rejected (the previous rules stay in force).",
		}),
		successAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxnotify_rules_last_reload_success_timestamp_seconds", Help: "Unix time of the last successful rules load or reload.",
		}),
	}
	reg.MustRegister(r.info, r.succeeded, r.successAt)
	return r
}

// install makes set the current rule set and updates the metrics.
func (r *reloader) install(set *rules.Set) (old *rules.Set) {
	old = r.holder.p.Swap(set)
	if old != nil && old.Version != set.Version {
		r.info.DeleteLabelValues(old.Version)
	}
	r.info.WithLabelValues(set.Version).Set(float64(set.LoadedAt.Unix()))
	r.succeeded.Set(1)
	r.successAt.Set(float64(time.Now().UnixNano()) / 1e9)
	return old
}

// reload loads the rules path and installs the set if it is valid.
func (r *reloader) reload(why string) error {
	set, err := LoadRules(r.cfg)
	cur := r.holder.Current()
	if err != nil {
		r.succeeded.Set(0)
		fields := logrus.Fields{"trigger": why, "path": r.cfg.Rules.Path}
		if cur != nil {
			fields["version"] = cur.Version
		}
		failure := &reloadFailure{At: time.Now().UTC().Format(time.RFC3339)}
		var le *rules.LoadError
		if errors.As(err, &le) {
			for i, p := range le.Problems {
				r.log.WithFields(fields).Error(p.String())
				if i < maxReadyProblems {
					failure.Problems = append(failure.Problems, p.String())
				}
			}
			if n := len(le.Problems) - maxReadyProblems; n > 0 {
				failure.Problems = append(failure.Problems, fmt.Sprintf("... and %d more (see the log)", n))
			}
			fields["problems"] = len(le.Problems)
		} else {
			fields["error"] = err.Error()
			failure.Problems = []string{err.Error()}
		}
		r.failure.Store(failure)
		r.log.WithFields(fields).Error("rules reload rejected; the current rules stay in force")
		return err
	}
	r.failure.Store(nil)
	if cur != nil && cur.Version == set.Version {
		r.succeeded.Set(1)
		r.successAt.Set(float64(time.Now().UnixNano()) / 1e9)
		r.log.WithFields(logrus.Fields{"trigger": why, "version": set.Version}).Debug("rules unchanged")
		return nil
	}
	old := r.install(set)
	fields := logrus.Fields{"trigger": why, "version": set.Version, "rules": len(set.Rules), "files": len(set.Files)}
	if old != nil {
		fields["previous_version"] = old.Version
	}
	r.log.WithFields(fields).Info("rules reloaded")
	if r.installed != nil {
		r.installed(set)
	}
	return nil
}

// watchRules starts watching the rules path. Run calls it before the first load, so a change
// made while starting is not missed. Without a watch (an error is logged), reloads happen only
// on trigger.
//
// It watches the rules directory (for a single rule file, its parent directory) rather than the
// files: editors replace files by rename, and a Kubernetes ConfigMap volume swaps its `..data`
// symlink to a new timestamped directory, so the files' own inodes never change. Any create,
// write, remove or rename of a rule file (*.yaml, *.yml; for a single file, that name) or of a
// `..`-prefixed ConfigMap entry starts the debounce timer. If the directory itself is removed,
// file changes are no longer seen until a SIGHUP reload re-adds the watch.
func (r *reloader) watchRules() {
	r.fromPath = true
	var err error
	if r.w, r.dir, r.relevant, err = r.watch(); err != nil {
		r.log.WithError(err).WithField("path", r.cfg.Rules.Path).Error("cannot watch the rules; they reload only on SIGHUP")
	}
}

// close stops watching; call it once run has returned (or was never started).
func (r *reloader) close() {
	if r.w != nil {
		_ = r.w.Close()
	}
}

// run reloads on trigger and on changes seen by the watch until ctx ends.
func (r *reloader) run(ctx context.Context, trigger <-chan struct{}) {
	var (
		events <-chan fsnotify.Event
		errs   <-chan error
	)
	if r.w != nil {
		events, errs = r.w.Events, r.w.Errors
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-trigger:
			if !ok {
				trigger = nil
				continue
			}
			if !r.fromPath {
				r.log.Warn("rules reload requested, but the rules were given preloaded, not read from a path; nothing to reload")
				continue
			}
			_ = r.reload("signal")
			if r.w != nil && len(r.w.WatchList()) == 0 {
				if err := r.w.Add(r.dir); err == nil {
					r.log.WithField("dir", r.dir).Info("watching the rules directory again")
				}
			}
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Op == fsnotify.Chmod || !r.relevant(ev.Name) {
				continue
			}
			timer.Reset(reloadDebounce)
		case <-timer.C:
			_ = r.reload("file change")
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			r.log.WithError(err).Warn("watching the rules")
		}
	}
}

// watch starts watching the directory that holds the rules and returns which event names
// concern them.
func (r *reloader) watch() (*fsnotify.Watcher, string, func(string) bool, error) {
	path := filepath.Clean(r.cfg.Rules.Path)
	dir, file := path, ""
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() {
		dir, file = filepath.Dir(path), filepath.Base(path)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, "", nil, err
	}
	if err := w.Add(dir); err != nil {
		w.Close()
		return nil, "", nil, err
	}
	relevant := func(name string) bool {
		base := filepath.Base(name)
		switch {
		case strings.HasPrefix(base, ".."): // ConfigMap: ..data, ..2026_11_23_..., ..data_tmp
			return true
		case file != "":
			return base == file
		default:
			ext := filepath.Ext(base)
			return ext == ".yaml" || ext == ".yml"
		}
	}
	return w, dir, relevant, nil
}
