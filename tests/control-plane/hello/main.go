// hello is the example workload of the kind setup: an HTTP server on :8080 that
// answers every path with one line naming the cluster and pod it runs in, so a client
// can see which member served it. /healthz answers "ok" for probes.
//
// `hello -resolve NAME` instead prints NAME's IPv4 addresses as the pod's resolver
// (CoreDNS) answers them, one per line, and exits: the kind end-to-end test resolves
// global names from inside member pods with it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sort"
	"time"
)

func main() {
	resolve := flag.String("resolve", "", "print this name's IPv4 addresses and exit")
	flag.Parse()
	if *resolve != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ips, err := net.DefaultResolver.LookupIP(ctx, "ip4", *resolve)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		out := make([]string, 0, len(ips))
		for _, ip := range ips {
			out = append(out, ip.String())
		}
		sort.Strings(out)
		for _, a := range out {
			fmt.Println(a)
		}
		return
	}
	cluster := os.Getenv("CLUSTER")
	pod := os.Getenv("POD_NAME")
	addr := os.Getenv("LISTEN")
	if addr == "" {
		addr = ":8080"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from cluster=%s pod=%s\n", cluster, pod)
	})
	server := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Printf("hello: cluster %s pod %s listening on %s", cluster, pod, addr)
	log.Fatal(server.ListenAndServe())
}
