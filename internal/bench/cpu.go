package bench

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// machineCPU is the first line of /proc/stat: the CPU time of all CPUs
// since boot, in clock ticks, busy and in total.
type machineCPU struct {
	busy, total uint64 // clock ticks, all CPUs
	cpus        int    // the CPUs /proc/stat lists (cpu0, cpu1, ...)
}

// readMachineCPU reads /proc/stat.
func readMachineCPU() (machineCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineCPU{}, fmt.Errorf("read machine CPU time: %w", err)
	}
	return parseMachineCPU(string(b))
}

// parseMachineCPU reads the "cpu" line of /proc/stat: user, nice, system,
// idle, iowait, irq, softirq, steal, ... in clock ticks. Idle and iowait
// are not busy, nor is steal (the hypervisor ran another machine: no work
// of this one); guest time is already counted in user.
func parseMachineCPU(stat string) (machineCPU, error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return machineCPU{}, fmt.Errorf("read machine CPU time: unexpected /proc/stat line %q", line)
	}
	var c machineCPU
	for i, v := range f[1:9] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return machineCPU{}, fmt.Errorf("read machine CPU time: field %d of %q: %w", i+1, line, err)
		}
		c.total += n
		if i != 3 && i != 4 && i != 7 { // idle, iowait, steal
			c.busy += n
		}
	}
	for _, l := range strings.Split(stat, "\n")[1:] {
		if len(l) > 3 && strings.HasPrefix(l, "cpu") && l[3] >= '0' && l[3] <= '9' {
			c.cpus++
		}
	}
	return c, nil
}

// busyTimeSince returns the CPU time the machine's CPUs were busy between
// prev and c, all CPUs together: clock ticks of 1/100 s (USER_HZ), as in
// /proc/<pid>/stat. Unlike a busy share times the process's CPU count, it
// holds when the benchmark runs on fewer CPUs than the machine has.
func (c machineCPU) busyTimeSince(prev machineCPU) time.Duration {
	if c.busy <= prev.busy {
		return 0
	}
	return time.Duration(c.busy-prev.busy) * 10 * time.Millisecond
}

// busySince returns the busy share of the CPU time between prev and c.
func (c machineCPU) busySince(prev machineCPU) float64 {
	if c.total <= prev.total {
		return 0
	}
	return float64(c.busy-prev.busy) / float64(c.total-prev.total)
}

// procSample is a process's command name and CPU time (user + system)
// at one moment.
type procSample struct {
	comm string
	cpu  time.Duration
}

// parseProcStat reads /proc/<pid>/stat's command name and CPU time.
func parseProcStat(stat string) (procSample, error) {
	open, end := strings.IndexByte(stat, '('), strings.LastIndexByte(stat, ')')
	if open < 0 || end < open {
		return procSample{}, errors.New("no command name")
	}
	fields := strings.Fields(stat[end+1:])
	if len(fields) < 13 {
		return procSample{}, errors.New("too few fields")
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return procSample{}, err
	}
	// Linux reports clock ticks of 1/100 s (USER_HZ) on every platform Go
	// supports.
	return procSample{comm: stat[open+1 : end], cpu: time.Duration(utime+stime) * 10 * time.Millisecond}, nil
}

// snapshotProcesses samples every process the benchmark can see, by pid.
// Processes it cannot read (gone meanwhile, or not permitted) are left out.
func snapshotProcesses() map[int]procSample {
	out := map[int]procSample{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		if s, err := parseProcStat(string(b)); err == nil {
			out[pid] = s
		}
	}
	return out
}

// cpuByCommand returns the CPU time processes used between two snapshots,
// leaving out the pids in skip, summed by what they are: PostgreSQL's
// processes (postgres), RabbitMQ's (beam.smp and its helpers), this
// process ("load generator") and the others by command name. A process
// started in between counts from zero; one that ended in between is
// missed.
func cpuByCommand(before, after map[int]procSample, skip map[int]bool) map[string]time.Duration {
	self := os.Getpid()
	out := map[string]time.Duration{}
	for pid, a := range after {
		if skip[pid] {
			continue
		}
		used := a.cpu
		if b, ok := before[pid]; ok && b.comm == a.comm {
			used -= b.cpu
		}
		if used <= 0 {
			continue
		}
		out[processKind(pid, self, a.comm)] += used
	}
	return out
}

// processKind names what a process is for the CPU table.
func processKind(pid, self int, comm string) string {
	switch {
	case pid == self:
		return "load generator"
	case comm == "postgres":
		return "PostgreSQL"
	case comm == "beam.smp" || comm == "erl_child_setup" || comm == "epmd" || strings.HasPrefix(comm, "inet_gethost"):
		return "RabbitMQ"
	}
	return comm
}

// cpuWindow holds the machine's and every process's CPU time at the start
// of a measured window.
type cpuWindow struct {
	machine    machineCPU
	machineErr error
	procs      map[int]procSample
	start      time.Time
}

// startCPUWindow samples the machine and every process now.
func startCPUWindow() cpuWindow {
	m, err := readMachineCPU()
	return cpuWindow{machine: m, machineErr: err, procs: snapshotProcesses(), start: time.Now()}
}

// CPUUse is where the machine's CPU time went over one or more windows
// in which Ops operations completed.
type CPUUse struct {
	// Machine is the machine's busy time, all CPUs, whoever used it; zero
	// when /proc/stat could not be read.
	Machine time.Duration
	// Elapsed is the windows' wall-clock time.
	Elapsed time.Duration
	// ByKind is the processes' CPU time by what they are (see
	// cpuByCommand); the services appear under their command names.
	ByKind map[string]time.Duration
	Ops    int64
	// CPUs is the machine's CPU count.
	CPUs int
}

// end closes the window, adding what was used in it and ops to u.
func (w cpuWindow) end(u *CPUUse, ops int64) {
	elapsed := time.Since(w.start)
	m, err := readMachineCPU()
	if err == nil && w.machineErr == nil {
		u.Machine += m.busyTimeSince(w.machine)
	}
	if u.ByKind == nil {
		u.ByKind = map[string]time.Duration{}
	}
	for kind, d := range cpuByCommand(w.procs, snapshotProcesses(), nil) {
		u.ByKind[kind] += d
	}
	u.Elapsed += elapsed
	u.Ops += ops
	u.CPUs = runtime.NumCPU()
	if err == nil && m.cpus > 0 {
		u.CPUs = m.cpus
	}
}

// PerOp returns d per operation of u (0 without operations).
func (u CPUUse) PerOp(d time.Duration) time.Duration {
	if u.Ops == 0 {
		return 0
	}
	return d / time.Duration(u.Ops)
}

// Busy returns the machine's busy share over u's windows.
func (u CPUUse) Busy() float64 {
	if u.Elapsed <= 0 || u.CPUs <= 0 {
		return 0
	}
	return float64(u.Machine) / float64(u.Elapsed) / float64(u.CPUs)
}
