// Package web owns klagg's chart page: its HTML, script and style, and the
// charting library that scripts/web copies in from npm, all embedded into
// the binary so the page needs nothing at run time.
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed all:assets
var assets embed.FS

// Handler serves the page at / and its files under /assets/.
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree always has assets/
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/":
			http.ServeFileFS(w, r, sub, "index.html")
		case len(r.URL.Path) > len("/assets/") && r.URL.Path[:len("/assets/")] == "/assets/":
			http.StripPrefix("/assets", files).ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}

// Built reports whether the charting library was copied in before the build.
func Built() bool {
	_, err := fs.Stat(assets, "assets/vendor/lightweight-charts.standalone.production.js")
	return err == nil
}
