# gorgon-rs's stand-in for Ruby Gorgon's callbacks: defines Gorgon::DefaultCallbacks and
# Gorgon.callbacks, loads a project's callbacks_class_file (relative to the working directory,
# as Gorgon loaded it) and calls its methods. The job's Ruby preload process and runners
# require it; run as a program (`ruby -e SHIM MOMENT CLASS_FILE`) it calls one method. A
# String returned by before_originate is the cluster id, as in Gorgon: it is printed as
# GORGON_CLUSTER_ID=... An exception is printed with its class, message and backtrace, and
# the exit status is 1.
unless defined?(Gorgon::DefaultCallbacks)
  module Gorgon
    MOMENTS = %i[before_originate after_sync before_creating_workers before_start after_complete
                 after_creating_workers after_job_finishes].freeze

    class DefaultCallbacks
      MOMENTS.each { |moment| define_method(moment) { nil } }
    end

    class << self
      attr_accessor :callbacks
    end

    # Loads the class file, which ends with `Gorgon.callbacks = YourCallbacks.new`.
    def self.load_callbacks(class_file)
      load File.expand_path(class_file)
      raise "#{class_file} does not set Gorgon.callbacks = YourCallbacks.new" unless callbacks
    end

    # Runs the block with stdout sent to stderr (where a callback's output belongs when stdout
    # is a protocol channel), handing it the real stdout; puts stdout back afterwards.
    def self.with_stdout_on_stderr
      saved = STDOUT.dup
      STDOUT.reopen(STDERR)
      yield saved
    ensure
      STDOUT.flush
      STDOUT.reopen(saved) if saved
    end

    # Calls one moment's method; returns its result.
    def self.run_callback(moment)
      callbacks.public_send(moment)
    end

    # An exception as the report shows it: class, message, and the backtrace without
    # gorgon-rs's own frames, its paths relative to the working directory.
    def self.describe(exception)
      here = "#{Dir.pwd}/"
      backtrace = Array(exception.backtrace)
                  .reject { |line| line.start_with?('-e:') || line.match?(%r{/gorgon-(preload|runner|warm)-\w+/}) }
                  .map { |line| line.start_with?(here) ? line[here.length..] : line }
      ["#{exception.class}: #{exception.message}", *backtrace.first(20)].join("\n")
    end
  end
end

if __FILE__ == $PROGRAM_NAME
  moment, class_file = ARGV
  begin
    Gorgon.load_callbacks(class_file)
    result = Gorgon.run_callback(moment)
    puts "GORGON_CLUSTER_ID=#{result}" if moment == 'before_originate' && result.is_a?(String)
  rescue Exception => e # rubocop:disable Lint/RescueException
    warn Gorgon.describe(e)
    exit 1
  end
end
