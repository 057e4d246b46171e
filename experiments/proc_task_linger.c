/* How often a thread that pthread_join has returned for is still listed in /proc/self/task: the
 * kernel clears the tid that pthread_join waits on before it unlinks the exiting task. Why
 * xmr.distributed.worker_threads polls briefly (results/README.md, "Test stability").
 *   gcc -O2 -o /tmp/proc_task_linger experiments/proc_task_linger.c -lpthread && /tmp/proc_task_linger 20000
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile pid_t tid;

static void *body(void *arg) {
  (void)arg;
  tid = syscall(SYS_gettid);
  return NULL;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 20000, listed = 0;
  char path[64];
  for (int i = 0; i < n; i++) {
    pthread_t t;
    pthread_create(&t, NULL, body, NULL);
    pthread_join(t, NULL);
    snprintf(path, sizeof path, "/proc/self/task/%d", tid);
    listed += access(path, F_OK) == 0;
  }
  printf("%d of %d joined threads still listed in /proc/self/task right after pthread_join\n", listed, n);
  return 0;
}
