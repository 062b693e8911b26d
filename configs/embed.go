// Package configs embeds the shipped rule files and sample events so `wxnotify demo` runs from
// any directory on a fresh clone. The files themselves are the documentation: edit them, not
// this package.
package configs

import (
	"embed"
	"io/fs"
	"path"
)

//go:embed rules/*.yaml samples/*.jsonl
var files embed.FS

// Rules returns the shipped rule files (not fixtures) by file name.
func Rules() (map[string][]byte, error) { return read("rules", "*.yaml", "*_test.yaml") }

// Samples returns the shipped sample event files by file name.
func Samples() (map[string][]byte, error) { return read("samples", "*.jsonl", "") }

func read(dir, pattern, exclude string) (map[string][]byte, error) {
	entries, err := fs.ReadDir(files, dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if ok, _ := path.Match(pattern, e.Name()); !ok {
			continue
		}
		if ok, _ := path.Match(exclude, e.Name()); exclude != "" && ok {
			continue
		}
		b, err := files.ReadFile(dir + "/" + e.Name())
		if err != nil {
			return nil, err
		}
		out[e.Name()] = b
	}
	return out, nil
}
