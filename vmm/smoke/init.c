// Smoke-test PID 1 for both levels: "outer" (the terminal: load kvm and bridge, run the vmm)
// and "guest" (the appliance: load virtio modules, check disks, rng and network, print a
// marker, power off or reboot). `smoke=reboot` on the outer command line makes the guest
// reboot instead (the vmm must then exit 2).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <signal.h>
#include <net/if.h>
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <linux/sockios.h>
#include <net/ethernet.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <time.h>

#define ETHERTYPE_SMOKE 0x88b5 /* local experimental ethertype */

static void load(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { printf("SMOKE: cannot open %s\n", path); return; }
    if (syscall(SYS_finit_module, fd, "", 0) != 0) perror(path);
    close(fd);
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static void cat(const char *p) {
    char buf[4096]; int fd = open(p, O_RDONLY); if (fd < 0) { printf("SMOKE: no %s\n", p); return; }
    int n = read(fd, buf, sizeof buf - 1); if (n > 0) { buf[n] = 0; printf("%s: %s", p, buf); } close(fd);
}

static int contains(const char *file, const char *what) {
    char buf[4096] = {0}; int fd = open(file, O_RDONLY); if (fd < 0) return 0;
    read(fd, buf, sizeof buf - 1); close(fd); return strstr(buf, what) != 0;
}

static void ifup(const char *name) {
    int s = socket(AF_INET, SOCK_DGRAM, 0); struct ifreq r = {0};
    strncpy(r.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFFLAGS, &r) == 0) { r.ifr_flags |= IFF_UP; if (ioctl(s, SIOCSIFFLAGS, &r)) perror("SIOCSIFFLAGS"); }
    else perror(name);
    close(s);
}

/* A raw socket on `ifname` for our ethertype, with a receive timeout. */
static int raw_socket(const char *ifname, int *ifindex) {
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETHERTYPE_SMOKE));
    *ifindex = if_nametoindex(ifname);
    struct sockaddr_ll a = {0}; a.sll_family = AF_PACKET; a.sll_protocol = htons(ETHERTYPE_SMOKE); a.sll_ifindex = *ifindex;
    if (bind(s, (struct sockaddr *)&a, sizeof a)) perror("bind AF_PACKET");
    struct timeval tv = {0, 200000}; setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return s;
}

static void send_frame(int s, int ifindex, const char *payload) {
    unsigned char f[64] = {0};
    memset(f, 0xff, 6); f[6] = 0x02; f[11] = 0x01; f[12] = ETHERTYPE_SMOKE >> 8; f[13] = ETHERTYPE_SMOKE & 0xff;
    strcpy((char *)f + 14, payload);
    struct sockaddr_ll a = {0}; a.sll_family = AF_PACKET; a.sll_ifindex = ifindex; a.sll_halen = 6; memset(a.sll_addr, 0xff, 6);
    if (sendto(s, f, sizeof f, 0, (struct sockaddr *)&a, sizeof a) < 0) perror("sendto");
}

static int wait_frame(int s, const char *payload, double secs) {
    unsigned char f[2048]; double end = now() + secs;
    while (now() < end) { int n = recv(s, f, sizeof f, 0); if (n > 14 && strstr((char *)f + 14, payload)) return 1; }
    return 0;
}

int main(void) {
    mount("proc", "/proc", "proc", 0, 0);
    mount("sys", "/sys", "sysfs", 0, 0);
    mount("dev", "/dev", "devtmpfs", 0, 0);
    setvbuf(stdout, 0, _IONBF, 0);
    if (access("/guest", F_OK) == 0) {
        printf("SMOKE: outer up\n");
        load("/modules/irqbypass.ko"); load("/modules/ccp.ko"); load("/modules/kvm.ko"); load("/modules/kvm-amd.ko");
        load("/modules/tun.ko"); load("/modules/llc.ko"); load("/modules/stp.ko"); load("/modules/bridge.ko");
        if (access("/dev/kvm", F_OK) != 0) { printf("SMOKE: no /dev/kvm\n"); }
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        if (ioctl(s, SIOCBRADDBR, "br0")) perror("SIOCBRADDBR"); close(s);
        ifup("br0");
        int reboot_test = contains("/proc/cmdline", "smoke=reboot");
        double t0 = now();
        int pipefd[2]; pipe(pipefd);
        pid_t p = fork();
        if (p == 0) {
            dup2(pipefd[1], 1); close(pipefd[0]); close(pipefd[1]);
            char *argv[] = {"/vmm", "run", "--kernel", "/guest/vmlinuz", "--initrd", "/guest/initrd", "--memory", "256",
                "--vcpus", "2", "--no-input", "--disk", "/guest/disk.img,ro", "--disk", "/guest/disk2.img",
                "--net", "bridge=br0,tap=vmtap0,mac=52:54:00:12:34:56",
                "--cmdline", reboot_test ?
                "console=ttyS0 reboot=a panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests tsc=reliable pci=off quiet smoke=reboot" :
                "console=ttyS0 reboot=a panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests tsc=reliable pci=off quiet", 0};
            char *envp[] = {contains("/proc/cmdline", "smoke=debug") ? "RUST_LOG=debug" : "RUST_LOG=info", 0};
            execve("/vmm", argv, envp); perror("exec vmm"); _exit(127);
        }
        pid_t responder = fork();
        if (responder == 0) {
            int ifindex; int r = raw_socket("br0", &ifindex);
            if (wait_frame(r, "GUEST-PING", 120)) {
                printf("SMOKE: host got the guest's frame through tap and bridge\n");
                for (int i = 0; i < 20; i++) { send_frame(r, ifindex, "HOST-PONG"); usleep(100000); }
            }
            _exit(0);
        }
        close(pipefd[1]);
        /* Relay the guest's console, stamping each line with the time since the vmm's exec. */
        { FILE *in = fdopen(pipefd[0], "r"); char line[512];
          while (in && fgets(line, sizeof line, in)) printf("[+%6.2f s] %s", now() - t0, line); }
        int st = 0; waitpid(p, &st, 0);
        kill(responder, SIGKILL);
        printf("SMOKE: vmm exited status %d (signal %d) after %.2f s\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0, now() - t0);
        char buf[16] = {0}; int fd = open("/guest/disk2.img", O_RDONLY); if (fd >= 0) { read(fd, buf, 15); close(fd); }
        printf("SMOKE: disk2 now starts with '%s'\n", buf);
    } else {
        printf("GUEST: init up\n");
        cat("/proc/cmdline");
        int cpus = 0; { FILE *f = fopen("/proc/cpuinfo", "r"); char l[256]; while (f && fgets(l, sizeof l, f)) if (!strncmp(l, "processor", 9)) cpus++; if (f) fclose(f); }
        printf("GUEST: %d cpus\n", cpus);
        load("/modules/virtio_ring.ko"); load("/modules/virtio.ko"); load("/modules/virtio_mmio.ko"); load("/modules/virtio_blk.ko");
        load("/modules/virtio-rng.ko"); load("/modules/failover.ko"); load("/modules/net_failover.ko"); load("/modules/virtio_net.ko");
        for (int i = 0; i < 50 && access("/sys/block/vda", F_OK) != 0; i++) usleep(100000);
        cat("/sys/block/vda/size");
        cat("/sys/block/vda/ro");
        cat("/sys/block/vdb/size");
        char buf[32] = {0};
        int fd = open("/dev/vda", O_RDONLY); if (fd >= 0) { read(fd, buf, 20); close(fd); printf("GUEST: vda starts with '%s'\n", buf); } else perror("/dev/vda");
        fd = open("/dev/vdb", O_WRONLY); if (fd >= 0) { if (write(fd, "written-by-guest", 16) != 16) perror("write vdb"); fsync(fd); close(fd); } else perror("/dev/vdb");
        int ok = 0; fd = open("/dev/hwrng", O_RDONLY); if (fd >= 0) { ok = read(fd, buf, 16) == 16; close(fd); }
        printf("GUEST: hwrng read %s\n", ok ? "ok" : "failed");
        cat("/sys/class/misc/hw_random/rng_current");
        for (int i = 0; i < 30 && access("/sys/class/net/eth0", F_OK) != 0; i++) usleep(100000);
        cat("/sys/class/net/eth0/address");
        ifup("eth0");
        int ifindex; int r = raw_socket("eth0", &ifindex);
        int got = 0;
        for (int i = 0; i < 30 && !got; i++) { send_frame(r, ifindex, "GUEST-PING"); got = wait_frame(r, "HOST-PONG", 0.3); }
        printf("GUEST: %s\n", got ? "received the host's frame" : "no frame from the host");
        printf("GUEST MARKER: appliance reached init, %s\n", contains("/proc/cmdline", "smoke=reboot") ? "rebooting" : "powering off");
        sync();
        if (contains("/proc/cmdline", "smoke=reboot")) reboot(RB_AUTOBOOT);
    }
    reboot(RB_POWER_OFF);
    return 0;
}
