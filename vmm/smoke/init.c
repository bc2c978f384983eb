// Smoke-test PID 1 for both levels: "outer" (the terminal: load kvm, run the vmm) and
// "guest" (the appliance: load virtio modules, check the disk, print a marker, power off).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <time.h>

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

int main(void) {
    mount("proc", "/proc", "proc", 0, 0);
    mount("sys", "/sys", "sysfs", 0, 0);
    mount("dev", "/dev", "devtmpfs", 0, 0);
    setvbuf(stdout, 0, _IONBF, 0);
    if (access("/guest", F_OK) == 0) {
        printf("SMOKE: outer up\n");
        load("/modules/irqbypass.ko"); load("/modules/ccp.ko"); load("/modules/kvm.ko"); load("/modules/kvm-amd.ko");
        if (access("/dev/kvm", F_OK) != 0) { printf("SMOKE: no /dev/kvm\n"); }
        double t0 = now();
        pid_t p = fork();
        if (p == 0) {
            char *argv[] = {"/vmm", "run", "--kernel", "/guest/vmlinuz", "--initrd", "/guest/initrd", "--memory", "256",
                "--vcpus", "2", "--no-input", "--disk", "/guest/disk.img,ro", "--disk", "/guest/disk2.img",
                "--cmdline", "console=ttyS0 reboot=a panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests tsc=reliable quiet", 0};
            char *envp[] = {"RUST_LOG=info", 0};
            execve("/vmm", argv, envp); perror("exec vmm"); _exit(127);
        }
        int st = 0; waitpid(p, &st, 0);
        printf("SMOKE: vmm exited status %d (signal %d) after %.2f s\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0, now() - t0);
        char buf[16] = {0}; int fd = open("/guest/disk2.img", O_RDONLY); if (fd >= 0) { read(fd, buf, 15); close(fd); }
        printf("SMOKE: disk2 now starts with '%s'\n", buf);
    } else {
        printf("GUEST: init up\n");
        cat("/proc/cmdline");
        int cpus = 0; { FILE *f = fopen("/proc/cpuinfo", "r"); char l[256]; while (f && fgets(l, sizeof l, f)) if (!strncmp(l, "processor", 9)) cpus++; if (f) fclose(f); }
        printf("GUEST: %d cpus\n", cpus);
        load("/modules/virtio_ring.ko"); load("/modules/virtio.ko"); load("/modules/virtio_mmio.ko"); load("/modules/virtio_blk.ko");
        for (int i = 0; i < 50 && access("/sys/block/vda", F_OK) != 0; i++) usleep(100000);
        cat("/sys/block/vda/size");
        cat("/sys/block/vda/ro");
        cat("/sys/block/vdb/size");
        char buf[32] = {0};
        int fd = open("/dev/vda", O_RDONLY); if (fd >= 0) { read(fd, buf, 20); close(fd); printf("GUEST: vda starts with '%s'\n", buf); } else perror("/dev/vda");
        fd = open("/dev/vdb", O_WRONLY); if (fd >= 0) { if (write(fd, "written-by-guest", 16) != 16) perror("write vdb"); fsync(fd); close(fd); } else perror("/dev/vdb");
        int ok = 1; fd = open("/dev/hwrng", O_RDONLY); if (fd >= 0) { ok = read(fd, buf, 16) == 16; close(fd); } 
        printf("GUEST: hwrng %s\n", fd >= 0 && ok ? "ok" : "missing");
        cat("/sys/class/misc/hw_random/rng_current");
        printf("GUEST MARKER: appliance reached init, powering off\n");
        sync();
    }
    reboot(RB_POWER_OFF);
    return 0;
}
