package rules

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/parser"
)

// whyFalse explains a false `when`: the first top-level conjunct (of a && b && ...) that is
// false for ev, with the values of the event paths it reads. Tooling only: it compiles the
// conjuncts on every call.
func (r *Rule) whyFalse(s *Set, st *state, ev Event) string {
	// The source, not r.when.Node(): the compiled tree has been rewritten by pathPatch.
	tree, err := parser.Parse(r.When)
	if err != nil {
		return ": " + r.When
	}
	conj := splitAnd(tree.Node, nil)
	for _, c := range conj {
		src := c.String()
		prog, err := expr.Compile(src, append(slices.Clip(s.exprOpts), expr.AsBool())...)
		if err != nil {
			continue
		}
		if v, err := st.run(prog); err == nil && v == false {
			return ": " + src + describePaths(c, ev, s.zone)
		}
	}
	return ": " + r.When + describePaths(tree.Node, ev, s.zone)
}

func splitAnd(n ast.Node, out []ast.Node) []ast.Node {
	if b, ok := n.(*ast.BinaryNode); ok && (b.Operator == "&&" || b.Operator == "and") {
		return splitAnd(b.Right, splitAnd(b.Left, out))
	}
	return append(out, n)
}

// describePaths lists event paths (event.a.b) read by n with their values in ev.
func describePaths(n ast.Node, ev Event, zone *time.Location) string {
	var paths [][]string
	ast.Find(n, func(n ast.Node) bool {
		if p, ok := eventPath(n); ok {
			paths = append(paths, p)
		}
		return false
	})
	// Keep the longest paths: event.order.id, not also event.order.
	var keep []string
	var vals []string
	for i, p := range paths {
		longer := slices.ContainsFunc(paths, func(q []string) bool { return len(q) > len(p) && slices.Equal(q[:len(p)], p) })
		name := "event." + strings.Join(p, ".")
		if longer || slices.Contains(keep, name) || i > 8 {
			continue
		}
		keep = append(keep, name)
		v, ok := lookup(ev.m, p)
		if !ok {
			vals = append(vals, name+" is missing")
			continue
		}
		b, err := appendJSON(nil, v, zone)
		if err != nil {
			b = fmt.Appendf(nil, "%v", v)
		}
		vals = append(vals, name+" = "+truncateRunes(string(b), 60))
	}
	if len(vals) == 0 {
		return ""
	}
	return " (" + strings.Join(vals, ", ") + ")"
}

// eventPath returns the keys of a member chain event.a["b"].c with constant string keys.
func eventPath(n ast.Node) ([]string, bool) {
	var keys []string
	for {
		switch x := n.(type) {
		case *ast.ChainNode:
			n = x.Node
		case *ast.MemberNode:
			s, ok := x.Property.(*ast.StringNode)
			if !ok {
				return nil, false
			}
			keys = append(keys, s.Value)
			n = x.Node
		case *ast.IdentifierNode:
			if x.Value != "event" || len(keys) == 0 {
				return nil, false
			}
			slices.Reverse(keys)
			return keys, true
		default:
			return nil, false
		}
	}
}

func lookup(m map[string]any, path []string) (any, bool) {
	var cur any = m
	for _, k := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = mm[k]; !ok || cur == nil {
			return nil, false
		}
	}
	return cur, true
}
