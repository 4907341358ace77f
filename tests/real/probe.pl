#!/usr/bin/perl
# Sandbox probe for tests/real/systemd.sh (perl-base only: it runs inside a minimal Debian).
# Run by systemd as an ExecStartPost= of det-tls-proxy.service (so with exactly the unit's
# sandbox), and once in a plain DynamicUser transient service as the baseline. Each line:
#   dtp-probe NAME allowed|blocked:ERRNO
# An unprivileged process can do each of these things unless a unit directive forbids it:
#   netlink   socket(AF_NETLINK)            allowed by RestrictAddressFamilies= (the proxy's
#                                           socket-table lookups of its TCP clients)
#   vsock     socket(AF_VSOCK)              RestrictAddressFamilies=
#   userns    unshare(CLONE_NEWUSER)        RestrictNamespaces=
#   suid      chmod u+s on its own file     RestrictSUIDSGID=
#   persona   personality(PER_LINUX32)      LockPersonality=
#   wx        mmap(PROT_WRITE|PROT_EXEC)    MemoryDenyWriteExecute=
#   ptrace    ptrace(PTRACE_TRACEME)        SystemCallFilter=@system-service (not in the set),
#                                           and SystemCallErrorNumber=EPERM: without it the
#                                           probe dies of SIGSYS instead of printing a line.
use strict;
use warnings;
use Socket;
use POSIX ();

$| = 1;
my $arch = (POSIX::uname())[4];
my %nr = $arch eq 'x86_64'
    ? (ptrace => 101, personality => 135, unshare => 272, mmap => 9)
    : $arch eq 'aarch64'
    ? (ptrace => 117, personality => 92, unshare => 97, mmap => 222)
    : die "probe.pl: no syscall numbers for $arch\n";

sub report {
    my ($name, $ok) = @_;
    my $errno = $! + 0;
    my $text = $ok ? 'allowed' : 'blocked:' . ($errno == 1 ? 'EPERM' : $errno == 97 ? 'EAFNOSUPPORT' : "errno$errno");
    print "dtp-probe $name $text\n";
}

report('netlink', socket(my $s, 16, SOCK_RAW, 0));    # AF_NETLINK, NETLINK_ROUTE
report('vsock', socket(my $v, 40, SOCK_STREAM, 0));   # AF_VSOCK

{
    # In a child: a successful unshare changes the process for good.
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        my $r = syscall($nr{unshare}, 0x10000000);    # CLONE_NEWUSER
        POSIX::_exit($r == 0 ? 0 : ($! + 0) % 256 || 255);
    }
    waitpid($pid, 0);
    $! = $? >> 8;
    report('userns', $? == 0);
}

{
    my $dir = $ENV{RUNTIME_DIRECTORY} // $ENV{TMPDIR} // '/tmp';
    $dir = (split /:/, $dir)[0];
    my $f = "$dir/dtp-probe-suid.$$";
    open(my $fh, '>', $f) or die "probe.pl: create $f: $!\n";
    close $fh;
    report('suid', chmod(04755, $f));
    unlink $f;
}

{
    my $old = syscall($nr{personality}, 0xffffffff);
    my $r = syscall($nr{personality}, 0x0008);    # PER_LINUX32
    report('persona', $r != -1);
    syscall($nr{personality}, $old) if $r != -1;
}

{
    my $r = syscall($nr{mmap}, 0, 4096, 7, 0x22, -1, 0);    # RWX, MAP_PRIVATE|MAP_ANONYMOUS
    report('wx', $r != -1);
}

{
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        my $r = syscall($nr{ptrace}, 0, 0, 0, 0);    # PTRACE_TRACEME
        POSIX::_exit($r == 0 ? 0 : ($! + 0) % 256 || 255);
    }
    waitpid($pid, 0);
    if ($? & 127) {
        print "dtp-probe ptrace killed:signal" . ($? & 127) . "\n";
    } else {
        $! = $? >> 8;
        report('ptrace', $? == 0);
    }
}
exit 0;
