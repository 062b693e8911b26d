package deploy_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
)

var dashboardPath = filepath.Join("grafana", "wxnotify.json")

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, dashboardPath), &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// grafanaVars are the dashboard's variables and Grafana's interval macros, as the tests fill them.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "1m",
	"$__interval", "1m",
	"$__range", "1h",
	"$namespace", ".*",
	"$job", ".*",
)

// dashboardQueries returns every PromQL query of the dashboard with its variables filled,
// keyed by where it is, including the metric selectors of label_values() variable queries.
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	d := readDashboard(t)
	queries := map[string]string{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			queries[fmt.Sprintf("panel %d %q %s", p.ID, p.Title, tg.RefID)] = grafanaVars.Replace(tg.Expr)
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.+), *[a-z_]+\)$`)
	for _, v := range d.Templating.List {
		q, ok := v.Query.(map[string]any)
		if v.Type != "query" || !ok {
			continue
		}
		s, _ := q["query"].(string)
		m := labelValues.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("variable %s: query %q: want label_values(SELECTOR, LABEL)", v.Name, s)
			continue
		}
		queries["variable "+v.Name] = grafanaVars.Replace(m[1])
	}
	for where, q := range queries {
		if strings.Contains(q, "$") {
			t.Errorf("%s: a variable the tests do not fill: %s", where, q)
		}
	}
	return queries
}

// metricNames parses a PromQL expression with Prometheus's parser and returns the metric names
// it selects.
func metricNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names, nil
}

func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.UID != "wxnotify" || d.Title == "" {
		t.Errorf("uid %q, title %q", d.UID, d.Title)
	}
	ids := map[int]bool{}
	targets := 0
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Title == "" {
			t.Errorf("panel %d has no title", p.ID)
		}
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24 columns", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource must be the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		targets += len(p.Targets)
	}
	queries := dashboardQueries(t)
	for where, q := range queries {
		names, err := metricNames(q)
		if err != nil {
			t.Errorf("%s: %v\n%s", where, err, q)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s selects no metric: %s", where, q)
		}
	}
	if targets < 30 {
		t.Errorf("%d queries: the dashboard lost panels", targets)
	}
	// Outcomes by status and class (issue 13): wxnotify_outcomes_total carries the class.
	found := false
	for _, q := range queries {
		found = found || strings.Contains(q, "sum by (status, class) (rate(wxnotify_outcomes_total{")
	}
	if !found {
		t.Error("no panel shows outcomes by status and class (wxnotify_outcomes_total)")
	}
}
