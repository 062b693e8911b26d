// Package deploy holds no code: it is the Go module of wxnotify's deployment files (Dockerfile,
// compose.yaml, Kubernetes kustomizations, Prometheus rules, Grafana dashboard), whose tests
// check those files with the real tools of each ecosystem: BuildKit's Dockerfile parser,
// compose-go, kustomize's krusty, the Kubernetes API types and the CRD schemas of KEDA,
// promtool and a Prometheus server scraping a running `wxnotify demo`.
//
// It is a module of its own so that these dependencies stay out of the product's go.mod.
// Run `go test ./...` in this directory; `.ci/run` does, after installing Debian's prometheus
// package (promtool and prometheus; tests that need them fail when they are missing).
package deploy
