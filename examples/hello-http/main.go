// hello-http: an ordinary Go net/http server, written with no knowledge of faasd. faasd serves it through its
// adapter (deploy with --http-port 8080): the adapter starts this program in each fresh container, waits until it
// listens, then relays the client's connection to it.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	started := time.Now()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		host, _ := os.Hostname()
		fmt.Fprintf(w, "hello from a plain HTTP server in %s (up %s)\n", host, time.Since(started).Round(time.Millisecond))
	})
	addr := ":" + envOr("PORT", "8080")
	log.Printf("listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
