// A throwaway single-node HDFS for the tests (scripts/lib/hdfs.sh): a MiniDFSCluster with one
// namenode and one datanode, every address on 127.0.0.1, no permissions and replication 1.
//
//   java -cp CLASSES:JARS/* MiniHdfs BASE_DIR NAMENODE_PORT [WATCH_PID]
//
// Prints "READY hdfs://127.0.0.1:PORT" on stdout once the namenode is out of safe mode and the
// datanode has registered, then serves until stdin reaches end of file (the shell holds it open),
// the process WATCH_PID (the shell) ends, or the JVM gets SIGTERM/SIGINT; in every case the
// cluster is shut down before exit. NAMENODE_PORT 0 picks a free port.
// Modelled on hdfs-native's rust/minidfs test program, without Kerberos, HA, federation,
// viewfs or encryption.

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

public class MiniHdfs {
    public static void main(String[] args) throws Exception {
        if (args.length < 2 || args.length > 3) {
            System.err.println("usage: MiniHdfs BASE_DIR NAMENODE_PORT [WATCH_PID]");
            System.exit(2);
        }
        File base = new File(args[0]);
        int port = Integer.parseInt(args[1]);

        Configuration conf = new HdfsConfiguration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getAbsolutePath());
        // Any user may write anywhere: the tests run as whoever runs them.
        conf.setBoolean("dfs.permissions.enabled", false);
        conf.setInt("dfs.replication", 1);
        // Small blocks so that the tests cover files of several blocks cheaply.
        conf.setLong("dfs.blocksize", 16L * 1024 * 1024);
        // Loopback only, and the datanode advertises 127.0.0.1 as its hostname as well as its IP,
        // whichever of the two a client connects to.
        conf.set("dfs.namenode.rpc-bind-host", "127.0.0.1");
        conf.set("dfs.namenode.http-address", "127.0.0.1:0");
        conf.set("dfs.datanode.address", "127.0.0.1:0");
        conf.set("dfs.datanode.http.address", "127.0.0.1:0");
        conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
        conf.set("dfs.datanode.hostname", "127.0.0.1");
        conf.setBoolean("dfs.client.use.datanode.hostname", false);
        conf.setBoolean("dfs.datanode.use.datanode.hostname", false);
        // One datanode: a failed pipeline cannot be repaired by adding another, so do not try.
        conf.set("dfs.client.block.write.replace-datanode-on-failure.policy", "NEVER");
        // Fast start: no safe-mode extension, frequent heartbeats.
        conf.setInt("dfs.namenode.safemode.extension", 0);
        conf.setLong("dfs.heartbeat.interval", 1);

        final MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf, base)
            .nameNodePort(port)
            .nameNodeHttpPort(0)
            .numDataNodes(1)
            .manageNameDfsDirs(true)
            .manageDataDfsDirs(true)
            .format(true)
            .build();
        // Shut down once, by whichever comes first (end of stdin or a signal); the other waits
        // for that shutdown to finish, so the JVM never halts half-way through it.
        final AtomicBoolean closed = new AtomicBoolean(false);
        Runnable shutdown = () -> {
            synchronized (closed) {
                if (closed.compareAndSet(false, true)) {
                    System.err.println("MiniHdfs: shutting down");
                    cluster.shutdown();
                }
            }
        };
        Runtime.getRuntime().addShutdownHook(new Thread(shutdown, "minihdfs-shutdown"));

        cluster.waitActive();
        cluster.waitClusterUp();
        String uri = "hdfs://127.0.0.1:" + cluster.getNameNodePort();
        System.out.println("READY " + uri);
        System.out.flush();

        // Serve until stdin is closed (the shell stops us) or the watched process is gone (the
        // shell was killed, and a child of it still holds stdin open).
        if (args.length == 3) {
            long watched = Long.parseLong(args[2]);
            Thread watch = new Thread(() -> {
                while (ProcessHandle.of(watched).map(ProcessHandle::isAlive).orElse(false)) {
                    try {
                        Thread.sleep(1000);
                    } catch (InterruptedException e) {
                        return;
                    }
                }
                System.err.println("MiniHdfs: process " + watched + " is gone");
                shutdown.run();
                System.exit(0);
            }, "minihdfs-watch");
            watch.setDaemon(true);
            watch.start();
        }
        InputStream in = System.in;
        byte[] buf = new byte[256];
        try {
            while (in.read(buf) >= 0) {
                // discard
            }
        } catch (IOException e) {
            // stdin gone: stop as well
        }
        shutdown.run();
        System.exit(0);
    }
}
