// hello is the example workload of the kind setup: an HTTP server on :8080 that
// answers every path with one line naming the cluster and pod it runs in, so a client
// can see which member served it. /healthz answers "ok" for probes.
//
// `hello -storm N -for D` is instead the telemetry agent of the incident: N clients,
// with the pod's ServiceAccount, LIST every ConfigMap of the cluster in a loop for D,
// then one line of totals: "storm: ok=.. throttled=.. failed=..".
//
// `hello -resolve NAME` instead prints NAME's IPv4 addresses as the pod's resolver
// (CoreDNS) answers them, one per line, and exits: the kind end-to-end test resolves
// global names from inside member pods with it.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	resolve := flag.String("resolve", "", "print this name's IPv4 addresses and exit")
	storm := flag.Int("storm", 0, "LIST every ConfigMap with this many clients, then exit")
	stormFor := flag.Duration("for", time.Minute, "how long -storm lasts")
	flag.Parse()
	if *storm > 0 {
		runStorm(*storm, *stormFor)
		return
	}
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

// runStorm lists /api/v1/configmaps from `clients` goroutines until `d` has passed,
// through the in-cluster API address with the pod's ServiceAccount token.
func runStorm(clients int, d time.Duration) {
	const account = "/var/run/secrets/kubernetes.io/serviceaccount/"
	token, err := os.ReadFile(account + "token")
	if err != nil {
		log.Fatal(err)
	}
	ca, err := os.ReadFile(account + "ca.crt")
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, MaxIdleConnsPerHost: clients},
	}
	url := "https://" + net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")) + "/api/v1/configmaps"
	var ok, throttled, failed atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header.Set("Authorization", "Bearer "+string(token))
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusOK:
					ok.Add(1)
				case resp.StatusCode == http.StatusTooManyRequests:
					throttled.Add(1)
				default:
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("storm: ok=%d throttled=%d failed=%d\n", ok.Load(), throttled.Load(), failed.Load())
}
