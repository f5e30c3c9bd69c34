// Readiness check and topic creation for local_stack/kafka.sh in one JVM.
// Starting a JVM costs ~1-2 s of CPU on a small machine; TopicCommand would
// need one per topic plus one more for the readiness check.
//
//   java -cp 'LIBS/*:CLASSES' LocalKafkaAdmin BOOTSTRAP TIMEOUT_S PARTITIONS [TOPIC,TOPIC...]
//
// Waits (up to TIMEOUT_S) until the broker answers a metadata request with
// itself as a live node and a known controller, then creates the missing
// topics (replication factor 1). Exit 0 on success, 1 on timeout/error.
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.errors.TopicExistsException;

public class LocalKafkaAdmin {
  public static void main(String[] args) throws Exception {
    if (args.length < 3) {
      System.err.println("usage: LocalKafkaAdmin BOOTSTRAP TIMEOUT_S PARTITIONS [TOPICS]");
      System.exit(2);
    }
    String bootstrap = args[0];
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
    int partitions = Integer.parseInt(args[2]);
    List<String> topics = new ArrayList<>();
    if (args.length > 3) {
      for (String t : args[3].split(",")) {
        if (!t.isBlank()) topics.add(t.trim());
      }
    }
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(AdminClientConfig.CLIENT_ID_CONFIG, "local-stack-admin");
    p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, 3000);
    p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 5000);
    p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, 200);
    p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, 100);
    p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
    String last = "no answer";
    try (Admin admin = Admin.create(p)) {
      boolean ready = false;
      while (!ready) {
        try {
          DescribeClusterResult c = admin.describeCluster();
          Collection<Node> nodes = c.nodes().get(3, TimeUnit.SECONDS);
          Node controller = c.controller().get(3, TimeUnit.SECONDS);
          ready = !nodes.isEmpty() && controller != null && !controller.isEmpty();
          if (!ready) last = "no live broker/controller in metadata yet";
        } catch (Exception e) {
          last = cause(e);
        }
        if (!ready) sleepOrGiveUp(deadline, last);
      }
      while (!topics.isEmpty()) {
        try {
          Set<String> existing = admin.listTopics().names().get(5, TimeUnit.SECONDS);
          List<NewTopic> missing = new ArrayList<>();
          for (String t : topics) {
            if (!existing.contains(t)) missing.add(new NewTopic(t, partitions, (short) 1));
          }
          List<String> created = new ArrayList<>();
          for (var e : admin.createTopics(missing).values().entrySet()) {
            try {
              e.getValue().get(10, TimeUnit.SECONDS);
              created.add(e.getKey());
            } catch (ExecutionException ex) {
              if (!(ex.getCause() instanceof TopicExistsException)) throw ex;
            }
          }
          if (!created.isEmpty()) {
            System.out.println("created topics " + String.join(",", created)
                + " (" + partitions + " partitions)");
          }
          break;
        } catch (Exception e) {
          last = cause(e);
          sleepOrGiveUp(deadline, last);
        }
      }
    }
  }

  static String cause(Throwable e) {
    Throwable c = (e instanceof ExecutionException && e.getCause() != null) ? e.getCause() : e;
    return c.getClass().getSimpleName() + ": " + c.getMessage();
  }

  static void sleepOrGiveUp(long deadline, String last) throws InterruptedException {
    if (System.nanoTime() > deadline) {
      System.err.println("kafka not ready: " + last);
      System.exit(1);
    }
    Thread.sleep(200);
  }
}
