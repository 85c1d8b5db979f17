package jobs

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the job lifecycle's Prometheus collectors. Labels are bounded sets (outcomes);
// never job ids or file names.
type metrics struct {
	finished  *prometheus.CounterVec
	queueWait prometheus.Histogram
	run       *prometheus.HistogramVec
	readBytes prometheus.Counter
	wroteByte prometheus.Counter
	retries   prometheus.Counter
	recovered prometheus.Counter
	strays    prometheus.Counter
	lost      *prometheus.CounterVec
	batches   *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "converter_jobs_finished_total",
			Help: "Jobs that reached a terminal state, by outcome (succeeded or the error type).",
		}, []string{"outcome"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "converter_job_queue_wait_seconds",
			Help:    "Time from a job's acceptance to the start of its first attempt.",
			Buckets: prometheus.ExponentialBucketsRange(0.01, 3600, 14),
		}),
		run: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "converter_job_run_duration_seconds",
			Help:    "Duration of one conversion attempt, by outcome.",
			Buckets: prometheus.ExponentialBucketsRange(0.01, 4*3600, 16),
		}, []string{"outcome"}),
		readBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "converter_read_bytes_total",
			Help: "Checkpoint bytes read by conversion attempts.",
		}),
		wroteByte: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "converter_written_bytes_total",
			Help: "Verified safetensors bytes written by successful conversions.",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "converter_job_retries_total",
			Help: "Attempts that failed with an internal error and were scheduled again.",
		}),
		recovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "converter_jobs_recovered_total",
			Help: "Jobs found interrupted by a crash at startup and queued again.",
		}),
		strays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "converter_stray_files_removed_total",
			Help: "Files no job owned (left by a crash) removed at startup.",
		}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "converter_outputs_lost_total",
			Help: "Stored files of succeeded jobs found missing or corrupt, by file (output, manifest).",
		}, []string{"file"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "converter_batches_finished_total",
			Help: "Batches that reached a terminal state, by state (succeeded, failed, canceled).",
		}, []string{"state"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.finished, m.queueWait, m.run, m.readBytes, m.wroteByte, m.retries, m.recovered, m.strays, m.lost, m.batches}
}

// stateCollector reports the queued and running gauges from the job table at scrape time, which
// stays right across restarts and crashes where hand-maintained gauges would drift.
type stateCollector struct {
	s       *Service
	queued  *prometheus.Desc
	running *prometheus.Desc
}

func newStateCollector(s *Service) *stateCollector {
	return &stateCollector{
		s:       s,
		queued:  prometheus.NewDesc("converter_jobs_queued", "Jobs accepted and waiting to run.", nil, nil),
		running: prometheus.NewDesc("converter_jobs_running", "Jobs being converted now.", nil, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queued
	ch <- c.running
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := countByState(ctx, c.s.db)
	if err != nil {
		c.s.log.Warn("count jobs for metrics", slog.String("error", err.Error()))
		ch <- prometheus.NewInvalidMetric(c.queued, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(counts[StateQueued]))
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(counts[StateRunning]))
}
