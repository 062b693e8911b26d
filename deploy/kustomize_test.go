package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// kedaVersion is the KEDA release whose CRD schemas the ScaledObject and TriggerAuthentication
// are validated against (read from its module, config/crd/bases). deploy/README.md names it.
const kedaVersion = "v2.20.2"

// kustomizations are the directories under kubernetes/ that must render and validate.
var kustomizations = []string{"base", "overlays/example"}

// object is one rendered Kubernetes object.
type object struct {
	apiVersion, kind, name string
	json                   []byte
}

func (o object) String() string { return o.kind + "/" + o.name }

// render runs kustomize's krusty, the library behind `kubectl apply -k`, on dir.
func render(fsys filesys.FileSystem, dir string) ([]object, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, dir)
	if err != nil {
		return nil, err
	}
	var objs []object
	for _, r := range m.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			return nil, err
		}
		objs = append(objs, object{r.GetApiVersion(), r.GetKind(), r.GetName(), b})
	}
	return objs, nil
}

// typed are the kinds checked by strict decoding into their Go API types: an unknown field, a
// field in the wrong case or a duplicate field is an error, as the API server's strict field
// validation (kubectl's default) reports it.
var typed = map[string]func() any{
	"v1/ConfigMap":                            func() any { return &corev1.ConfigMap{} },
	"v1/Service":                              func() any { return &corev1.Service{} },
	"apps/v1/Deployment":                      func() any { return &appsv1.Deployment{} },
	"policy/v1/PodDisruptionBudget":           func() any { return &policyv1.PodDisruptionBudget{} },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return &monitoringv1.ServiceMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return &monitoringv1.PrometheusRule{} },
}

// validate checks o against its API's schema: typed kinds by strict decoding, KEDA's by the
// API server's own CRD code (pruning finds unknown fields, the schema validator the rest) and
// their metadata by strict decoding into ObjectMeta.
func validate(t *testing.T, o object) error {
	gvk := o.apiVersion + "/" + o.kind
	if newObj, ok := typed[gvk]; ok {
		strict, err := kjson.UnmarshalStrict(o.json, newObj(), kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
		if err != nil {
			return fmt.Errorf("%s: %w", o, err)
		}
		if len(strict) > 0 {
			return fmt.Errorf("%s: %v", o, strict)
		}
		return nil
	}
	crd, ok := kedaSchemas(t)[gvk]
	if !ok {
		return fmt.Errorf("%s: %s has no schema here: add it to the checks", o, gvk)
	}
	return crd.validate(o)
}

type crdSchema struct {
	structural *structuralschema.Structural
	validator  validation.SchemaValidator
}

func (c crdSchema) validate(o object) error {
	var obj map[string]any
	if err := json.Unmarshal(o.json, &obj); err != nil {
		return err
	}
	var problems []string
	unknown := pruning.PruneWithOptions(obj, c.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	for _, u := range unknown {
		problems = append(problems, "unknown field "+strconv.Quote(u))
	}
	// The pruned object against the schema (types, enums, required fields, formats).
	for _, e := range validation.ValidateCustomResource(nil, obj, c.validator) {
		problems = append(problems, e.Error())
	}
	// Pruning leaves metadata to the API server's ObjectMeta handling: decode it strictly.
	var top struct {
		Metadata json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(o.json, &top); err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(top.Metadata, &metav1.ObjectMeta{}, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		strict = append(strict, err)
	}
	for _, e := range strict {
		problems = append(problems, "metadata: "+e.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %s", o, strings.Join(problems, "; "))
	}
	return nil
}

var (
	kedaOnce sync.Once
	kedaCRDs map[string]crdSchema
	kedaErr  error
)

// kedaSchemas reads the v1alpha1 schemas of KEDA's CRDs from its module at kedaVersion,
// downloaded by the go command like any module (not imported: its Go types pull in a
// controller's worth of dependencies).
func kedaSchemas(t *testing.T) map[string]crdSchema {
	kedaOnce.Do(func() {
		kedaCRDs, kedaErr = loadKedaSchemas(t)
	})
	if kedaErr != nil {
		t.Fatalf("KEDA %s CRDs: %v", kedaVersion, kedaErr)
	}
	return kedaCRDs
}

func loadKedaSchemas(t *testing.T) (map[string]crdSchema, error) {
	out, err := runCmd(t, os.TempDir(), append(os.Environ(), "GOFLAGS=-mod=mod"), "go", "mod", "download", "-json", "github.com/kedacore/keda/v2@"+kedaVersion)
	if err != nil {
		return nil, fmt.Errorf("go mod download: %v\n%s", err, out)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal([]byte(out), &mod); err != nil || mod.Dir == "" {
		return nil, fmt.Errorf("go mod download: %v\n%s", err, out)
	}
	schemas := map[string]crdSchema{}
	for _, file := range []string{"keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml"} {
		b, err := os.ReadFile(filepath.Join(mod.Dir, "config", "crd", "bases", file))
		if err != nil {
			return nil, err
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.Unmarshal(b, &crd); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		for _, v := range crd.Spec.Versions {
			if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
				continue
			}
			var internal apiextensions.JSONSchemaProps
			if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &internal, nil); err != nil {
				return nil, err
			}
			structural, err := structuralschema.NewStructural(&internal)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", file, v.Name, err)
			}
			validator, _, err := validation.NewSchemaValidator(&internal)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", file, v.Name, err)
			}
			schemas[crd.Spec.Group+"/"+v.Name+"/"+crd.Spec.Names.Kind] = crdSchema{structural, validator}
		}
	}
	return schemas, nil
}

func TestKustomize(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			objs, err := render(filesys.MakeFsOnDisk(), filepath.Join("kubernetes", dir))
			if err != nil {
				t.Fatalf("kustomize build: %v", err)
			}
			for _, o := range objs {
				if err := validate(t, o); err != nil {
					t.Error(err)
				}
			}
			checkRendered(t, objs)
		})
	}
}

// decodeAll decodes every object of a kind into its Go type (already validated).
func decodeAll[T any](t *testing.T, objs []object, kind string) []T {
	t.Helper()
	var out []T
	for _, o := range objs {
		if o.kind != kind {
			continue
		}
		var v T
		if err := json.Unmarshal(o.json, &v); err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		out = append(out, v)
	}
	return out
}

func one[T any](t *testing.T, objs []object, kind string) T {
	t.Helper()
	all := decodeAll[T](t, objs, kind)
	if len(all) != 1 {
		t.Fatalf("%d objects of kind %s, want 1", len(all), kind)
	}
	return all[0]
}

// unstructured is a KEDA object, read as plain JSON after its schema check.
type unstructured map[string]any

func (u unstructured) get(path ...string) any {
	var v any = map[string]any(u)
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func (u unstructured) str(path ...string) string { s, _ := u.get(path...).(string); return s }
func (u unstructured) num(path ...string) int    { f, _ := u.get(path...).(float64); return int(f) }

// checkRendered checks that the rendered objects fit together and fit wxnotify: what no schema
// can see.
func checkRendered(t *testing.T, objs []object) {
	dep := one[appsv1.Deployment](t, objs, "Deployment")
	configMaps := map[string]corev1.ConfigMap{}
	for _, cm := range decodeAll[corev1.ConfigMap](t, objs, "ConfigMap") {
		configMaps[cm.Name] = cm
	}
	pod := dep.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]

	// The config, from the ConfigMap the config volume mounts.
	var cfgMount, rulesMount *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		switch m.Name {
		case "config":
			cfgMount = &c.VolumeMounts[i]
		case "rules":
			rulesMount = &c.VolumeMounts[i]
		}
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = v
	}
	if cfgMount == nil || rulesMount == nil || volumes["config"].ConfigMap == nil || volumes["rules"].ConfigMap == nil {
		t.Fatalf("the container must mount the ConfigMap volumes config and rules")
	}
	cfgCM, ok := configMaps[volumes["config"].ConfigMap.Name]
	if !ok {
		t.Fatalf("config volume: no ConfigMap %s", volumes["config"].ConfigMap.Name)
	}
	cfgFile := filepath.Join(cfgMount.MountPath, "wxnotify.yaml")
	if !slices.Equal(c.Args, []string{"run", "-config", cfgFile}) {
		t.Errorf("args %q: want run -config %s", c.Args, cfgFile)
	}
	cfgText := cfgCM.Data["wxnotify.yaml"]
	cfg := readWxnotifyConfig(t, []byte(cfgText))

	t.Run("rules: a ConfigMap mounted as a directory at rules.path, stable name", func(t *testing.T) {
		if rulesMount.SubPath != "" || rulesMount.SubPathExpr != "" {
			t.Errorf("rules mounted with subPath: a subPath mount never sees ConfigMap updates")
		}
		if rulesMount.MountPath != cfg.Rules.Path {
			t.Errorf("rules mounted at %s, but rules.path is %s", rulesMount.MountPath, cfg.Rules.Path)
		}
		name := volumes["rules"].ConfigMap.Name
		cm, ok := configMaps[name]
		if !ok {
			t.Fatalf("rules volume: no ConfigMap %s", name)
		}
		// A hash suffix would give every change a new name, and so a rollout instead of a reload.
		if !strings.HasSuffix(name, "wxnotify-rules") {
			t.Errorf("rules ConfigMap %q: want a stable name (disableNameSuffixHash), so updates hot-reload", name)
		}
		if len(cm.Data) == 0 {
			t.Fatalf("rules ConfigMap %s is empty", name)
		}
		dir := t.TempDir()
		for file, text := range cm.Data {
			if !strings.HasSuffix(file, ".yaml") {
				t.Errorf("rules ConfigMap key %q: wxnotify loads *.yaml", file)
			}
			if err := os.WriteFile(filepath.Join(dir, file), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if out, err := runCmd(t, dir, nil, filepath.Join(productBinaries(t), "wxnotify"), "check", "-rules", dir); err != nil {
			t.Errorf("wxnotify check -rules on the ConfigMap's files: %v\n%s", err, out)
		}
	})

	// The container's environment as the kubelet builds it: envFrom ConfigMaps, then env.
	env := map[string]corev1.EnvVar{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			continue
		}
		cm, ok := configMaps[from.ConfigMapRef.Name]
		if !ok {
			t.Errorf("envFrom: no ConfigMap %s", from.ConfigMapRef.Name)
		}
		for k, v := range cm.Data {
			env[k] = corev1.EnvVar{Name: k, Value: v}
		}
	}
	for _, e := range c.Env {
		env[e.Name] = e
	}

	t.Run("environment: every variable of the config, secrets from Secrets", func(t *testing.T) {
		for v, hasDefault := range configVarsIn(t, "wxnotify.yaml", []byte(cfgText)) {
			if _, ok := env[v]; !ok && !hasDefault {
				t.Errorf("the config uses ${%s} and the container does not set it", v)
			}
		}
		for name, e := range env {
			secret := strings.Contains(name, "SECRET") || strings.Contains(name, "PASSWORD") || strings.Contains(name, "USERNAME")
			if secret && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
				t.Errorf("%s: a credential must come from a Secret (secretKeyRef)", name)
			}
		}
	})

	t.Run("wxnotify check accepts the rendered config", func(t *testing.T) {
		// Fails until wxnotify knows kafka.client_id, kafka.tls, kafka.sasl and
		// kafka.create_topics (issue 13): unknown keys are errors.
		dir := t.TempDir()
		rulesDir := filepath.Join(dir, "rules")
		if err := os.Mkdir(rulesDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for file, text := range configMaps[volumes["rules"].ConfigMap.Name].Data {
			if err := os.WriteFile(filepath.Join(rulesDir, file), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// rules.path as mounted in the pod, here.
		text := strings.Replace(cfgText, "path: "+cfg.Rules.Path, "path: "+rulesDir, 1)
		path := filepath.Join(dir, "wxnotify.yaml")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		checkEnv := []string{"PATH=" + os.Getenv("PATH")}
		for name, e := range env {
			switch {
			case name == "WXNOTIFY_KAFKA_CA_FILE":
				// The mounted CA is not here: the system roots stand in.
			case e.ValueFrom != nil:
				checkEnv = append(checkEnv, name+"=placeholder-"+strings.ToLower(name))
			default:
				checkEnv = append(checkEnv, name+"="+e.Value)
			}
		}
		if out, err := runCmd(t, dir, checkEnv, filepath.Join(productBinaries(t), "wxnotify"), "check", "-config", path); err != nil {
			t.Errorf("wxnotify check -config (the rendered wxnotify-config): %v\n%s", err, out)
		}
	})

	t.Run("pod: non-root, read-only root, resources, probes, grace above drain_timeout", func(t *testing.T) {
		psc, csc := pod.Spec.SecurityContext, c.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
			t.Errorf("pod securityContext: want runAsNonRoot and a non-zero runAsUser")
		}
		if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem ||
			csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
			csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") {
			t.Errorf("container securityContext: want readOnlyRootFilesystem, no privilege escalation, capabilities drop ALL")
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[r]; !ok {
				t.Errorf("no %s request", r)
			}
			if _, ok := c.Resources.Limits[r]; !ok {
				t.Errorf("no %s limit", r)
			}
		}
		port := listenPort(t, cfg.HTTP.Addr)
		portName := ""
		for _, p := range c.Ports {
			if uint32(p.ContainerPort) == port {
				portName = p.Name
			}
		}
		if portName == "" {
			t.Fatalf("no container port %d (http.addr)", port)
		}
		for _, p := range []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != portName {
				t.Errorf("%s probe: want GET %s on port %s", p.name, p.path, portName)
			}
		}
		grace := pod.Spec.TerminationGracePeriodSeconds
		if grace == nil || time.Duration(*grace)*time.Second < cfg.Processor.DrainTimeout+10*time.Second {
			t.Errorf("terminationGracePeriodSeconds %v: want at least processor.drain_timeout (%s) + 10s to flush and commit", grace, cfg.Processor.DrainTimeout)
		}
		if tag := c.Image[strings.LastIndex(c.Image, ":")+1:]; !strings.Contains(c.Image, ":") || tag == "latest" {
			t.Errorf("image %q: want a release tag", c.Image)
		}
		if dep.Spec.Replicas != nil {
			t.Errorf("replicas set: the ScaledObject owns the count")
		}
	})

	t.Run("Service, PodDisruptionBudget and ServiceMonitor select the pods", func(t *testing.T) {
		podLabels := pod.Labels
		svc := one[corev1.Service](t, objs, "Service")
		if !selects(svc.Spec.Selector, podLabels) {
			t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, podLabels)
		}
		pdb := one[policyv1.PodDisruptionBudget](t, objs, "PodDisruptionBudget")
		if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, podLabels) {
			t.Errorf("PodDisruptionBudget does not select the pods")
		}
		if pdb.Spec.MinAvailable != nil {
			t.Errorf("PodDisruptionBudget minAvailable: with one replica it blocks every node drain; use maxUnavailable")
		}
		sm := one[monitoringv1.ServiceMonitor](t, objs, "ServiceMonitor")
		if !selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
			t.Errorf("ServiceMonitor selector %v does not select the Service %v", sm.Spec.Selector.MatchLabels, svc.Labels)
		}
		svcPorts := map[string]bool{}
		for _, p := range svc.Spec.Ports {
			svcPorts[p.Name] = p.TargetPort.String() != "" && slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.TargetPort.String() })
		}
		for _, ep := range sm.Spec.Endpoints {
			if !svcPorts[ep.Port] {
				t.Errorf("ServiceMonitor endpoint port %q is not a Service port that reaches the container", ep.Port)
			}
		}
		// WxnotifyDown looks for up{job="wxnotify"}: the job is the Service's name.
		if !strings.HasSuffix(svc.Name, "wxnotify") {
			t.Errorf("Service %q: the alert rules expect the scrape job wxnotify", svc.Name)
		}
	})

	t.Run("ScaledObject: the group's lag, capped at the partition count, SASL from the same Secret", func(t *testing.T) {
		so := one[unstructured](t, objs, "ScaledObject")
		if so.str("spec", "scaleTargetRef", "name") != dep.Name {
			t.Errorf("scaleTargetRef %q: want the Deployment %s", so.str("spec", "scaleTargetRef", "name"), dep.Name)
		}
		partitions, err := strconv.Atoi(so.str("metadata", "annotations", "wxnotify.io/events-partitions"))
		if err != nil || partitions < 1 {
			t.Errorf("annotation wxnotify.io/events-partitions: %v", err)
		}
		if max := so.num("spec", "maxReplicaCount"); max < 1 || max > partitions {
			t.Errorf("maxReplicaCount %d: want 1..%d (the events topic's partitions)", max, partitions)
		}
		if so.num("spec", "minReplicaCount") < 1 {
			t.Errorf("minReplicaCount %d: want at least 1", so.num("spec", "minReplicaCount"))
		}
		triggers, _ := so.get("spec", "triggers").([]any)
		if len(triggers) != 1 {
			t.Fatalf("%d triggers, want 1 (kafka)", len(triggers))
		}
		tr := unstructured(triggers[0].(map[string]any))
		want := map[string]string{
			"consumerGroup":     cfg.Kafka.GroupID,
			"topic":             cfg.Kafka.EventsTopic,
			"sasl":              map[string]string{"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}[cfg.Kafka.SASL.Mechanism],
			"tls":               map[bool]string{true: "enable", false: "disable"}[cfg.Kafka.TLS.Enabled],
			"offsetResetPolicy": map[bool]string{true: "latest", false: "earliest"}[cfg.Kafka.StartOffset == "last"],
		}
		if tr.str("type") != "kafka" {
			t.Errorf("trigger type %q: want kafka", tr.str("type"))
		}
		for k, v := range want {
			if got := tr.str("metadata", k); got != v {
				t.Errorf("trigger metadata %s = %q: want %q, as the wxnotify config", k, got, v)
			}
		}
		if e := tr.str("metadata", "bootstrapServersFromEnv"); env[e].Name == "" {
			t.Errorf("bootstrapServersFromEnv %q: not a variable of the container", e)
		}
		ta := one[unstructured](t, objs, "TriggerAuthentication")
		if tr.str("authenticationRef", "name") != ta.str("metadata", "name") {
			t.Errorf("authenticationRef %q: want the TriggerAuthentication %s", tr.str("authenticationRef", "name"), ta.str("metadata", "name"))
		}
		refs := map[string]string{}
		list, _ := ta.get("spec", "secretTargetRef").([]any)
		for _, r := range list {
			r := unstructured(r.(map[string]any))
			refs[r.str("parameter")] = r.str("name") + "/" + r.str("key")
		}
		for param, envName := range map[string]string{"username": "WXNOTIFY_KAFKA_USERNAME", "password": "WXNOTIFY_KAFKA_PASSWORD"} {
			e := env[envName]
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("%s: not from a Secret", envName)
				continue
			}
			if got, want := refs[param], e.ValueFrom.SecretKeyRef.Name+"/"+e.ValueFrom.SecretKeyRef.Key; got != want {
				t.Errorf("TriggerAuthentication %s from %q, the Deployment's %s from %q", param, got, envName, want)
			}
		}
	})

	t.Run("PrometheusRule carries the rules file", func(t *testing.T) {
		pr := one[monitoringv1.PrometheusRule](t, objs, "PrometheusRule")
		var file monitoringv1.PrometheusRuleSpec
		if err := yaml.UnmarshalStrict(readFile(t, filepath.Join("prometheus", "wxnotify.rules.yml")), &file); err != nil {
			t.Fatal(err)
		}
		a, _ := json.Marshal(pr.Spec)
		b, _ := json.Marshal(file)
		if !bytes.Equal(a, b) {
			t.Errorf("the PrometheusRule's groups differ from prometheus/wxnotify.rules.yml: go test -run TestPrometheusRuleMatchesRulesFile -update")
		}
	})

	t.Run("every object carries app.kubernetes.io/name", func(t *testing.T) {
		for _, o := range objs {
			var m struct {
				Metadata metav1.ObjectMeta `json:"metadata"`
			}
			_ = json.Unmarshal(o.json, &m)
			if m.Metadata.Labels["app.kubernetes.io/name"] != "wxnotify" {
				t.Errorf("%s: no label app.kubernetes.io/name=wxnotify", o)
			}
		}
	})
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestKustomizeValidationCatches shows that a misspelled, miscased or mistyped field fails
// validation, for each way objects are validated.
func TestKustomizeValidationCatches(t *testing.T) {
	for _, tc := range []struct {
		file, old, new, want string
	}{
		{"deployment.yaml", "readinessProbe:", "readynessProbe:", `unknown field "spec.template.spec.containers[0].readynessProbe"`},
		{"deployment.yaml", "containerPort: 9464", "ContainerPort: 9464", `unknown field "spec.template.spec.containers[0].ports[0].ContainerPort"`},
		{"pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 1\n  minAvalable: 1", `unknown field "spec.minAvalable"`},
		{"servicemonitor.yaml", "scrapeTimeout:", "scrapeTimout:", `unknown field "spec.endpoints[0].scrapeTimout"`},
		{"prometheusrule.yaml", "          expr: absent(", "          exp: absent(", `unknown field "spec.groups[1].rules[0].exp"`},
		{"scaledobject.yaml", "maxReplicaCount: 8", "maxReplicas: 8", `unknown field "spec.maxReplicas"`},
		{"scaledobject.yaml", "pollingInterval: 30", "pollingInterval: thirty", `spec.pollingInterval: Invalid value: "string"`},
		{"triggerauthentication.yaml", "secretTargetRef:", "secretTargetRefs:", `unknown field "spec.secretTargetRefs"`},
		{"scaledobject.yaml", "  annotations:", "  anotations:", `metadata: unknown field "anotations"`},
		{"service.yaml", "targetPort: metrics", "targetport: metrics", `unknown field "spec.ports[0].targetport"`},
	} {
		t.Run(tc.file+" "+tc.new, func(t *testing.T) {
			fsys := copyToMemory(t, "kubernetes")
			path := "/kubernetes/base/" + tc.file
			b, err := fsys.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte(tc.old)) {
				t.Fatalf("%s lacks %q", tc.file, tc.old)
			}
			if err := fsys.WriteFile(path, bytes.Replace(b, []byte(tc.old), []byte(tc.new), 1)); err != nil {
				t.Fatal(err)
			}
			objs, err := render(fsys, "/kubernetes/base")
			if err != nil {
				t.Fatalf("kustomize build: %v", err)
			}
			var errs []string
			for _, o := range objs {
				if err := validate(t, o); err != nil {
					errs = append(errs, err.Error())
				}
			}
			if got := strings.Join(errs, "\n"); !strings.Contains(got, tc.want) {
				t.Errorf("validation errors %q lack %q", got, tc.want)
			}
		})
	}
}

// copyToMemory copies a directory of this module into an in-memory file system, at /dir.
func copyToMemory(t *testing.T, dir string) filesys.FileSystem {
	t.Helper()
	fsys := filesys.MakeFsInMemory()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return fsys.WriteFile("/"+filepath.ToSlash(path), b)
	})
	if err != nil {
		t.Fatal(err)
	}
	return fsys
}

// TestKubernetesRulesMatchConfigs keeps the base's rule files equal to configs/rules (kustomize
// reads files only below the kustomization, so they are copies). -update copies them again.
func TestKubernetesRulesMatchConfigs(t *testing.T) {
	src := filepath.Join(repoRoot(t), "configs", "rules")
	dst := filepath.Join("kubernetes", "base", "rules")
	want, _ := filepath.Glob(filepath.Join(src, "*.yaml"))
	want = slices.DeleteFunc(want, func(p string) bool { return strings.HasSuffix(p, "_test.yaml") })
	if len(want) == 0 {
		t.Fatalf("no rule files in %s", src)
	}
	got, _ := filepath.Glob(filepath.Join(dst, "*.yaml"))
	kustomization := string(readFile(t, filepath.Join("kubernetes", "base", "kustomization.yaml")))
	for _, p := range want {
		name := filepath.Base(p)
		b := readFile(t, p)
		if *update {
			if err := os.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		} else if c, err := os.ReadFile(filepath.Join(dst, name)); err != nil || !bytes.Equal(b, c) {
			t.Errorf("kubernetes/base/rules/%s differs from configs/rules/%s: go test -run TestKubernetesRulesMatchConfigs -update", name, name)
		}
		if !strings.Contains(kustomization, "- rules/"+name+"\n") {
			t.Errorf("kubernetes/base/kustomization.yaml does not put rules/%s in wxnotify-rules", name)
		}
	}
	if !*update && len(got) != len(want) {
		t.Errorf("kubernetes/base/rules has %d rule files, configs/rules %d", len(got), len(want))
	}
}

// TestPrometheusRuleMatchesRulesFile keeps kubernetes/base/prometheusrule.yaml generated from
// prometheus/wxnotify.rules.yml. -update writes it.
func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	rules := string(readFile(t, filepath.Join("prometheus", "wxnotify.rules.yml")))
	i := strings.Index(rules, "\ngroups:\n")
	if i < 0 {
		t.Fatal("prometheus/wxnotify.rules.yml: no top-level groups:")
	}
	var b strings.Builder
	b.WriteString(prometheusRuleHeader)
	for _, line := range strings.SplitAfter(rules[i+1:], "\n") {
		if strings.TrimSpace(line) == "" {
			b.WriteString(line)
			continue
		}
		b.WriteString("  " + line)
	}
	path := filepath.Join("kubernetes", "base", "prometheusrule.yaml")
	if *update {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if string(readFile(t, path)) != b.String() {
		t.Errorf("%s is not generated from prometheus/wxnotify.rules.yml: go test -run TestPrometheusRuleMatchesRulesFile -update", path)
	}
}

const prometheusRuleHeader = `# Prometheus Operator: the recording and alert rules of deploy/prometheus/wxnotify.rules.yml.
# Generated: edit that file, then ` + "`go test -run TestPrometheusRuleMatchesRulesFile -update`" + `
# in deploy/ rewrites spec below (the test fails while the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: wxnotify
spec:
`
