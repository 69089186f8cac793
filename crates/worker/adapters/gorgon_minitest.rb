# gorgon-rs built-in Minitest runner: loads Minitest and the suite's helper once, then runs a
# worker's files in one warm session (or each file, or batch of quick files, in a fork of its
# own with isolation "fork") and reports every test (runner protocol).
require_relative 'gorgon_runner'
require 'minitest'

# Files usually require minitest/autorun; its at_exit hook must never run in a runner.
Minitest.class_variable_set(:@@installed_at_exit, true)
$LOAD_PATH.unshift(File.expand_path('lib'), File.expand_path('test'), File.expand_path('spec'))
# The suite's helper: test/test_helper.rb, or spec/spec_helper.rb for a minitest/spec suite of
# *_spec.rb files.
if File.exist?('test/test_helper.rb')
  require 'test_helper'
elsif File.exist?('spec/spec_helper.rb')
  require 'spec_helper'
end
PRELOADED_RUNNABLES = Minitest::Runnable.runnables.dup
# The test classes a session has run already: each file runs only the classes it brought.
RAN_RUNNABLES = Set.new

# Records each test's result for the worker.
class GorgonMinitestReporter < Minitest::AbstractReporter
  def record(result)
    failure = result.failures.first
    status = if result.skipped? then 'skipped'
             elsif result.error? then 'errored'
             elsif failure then 'failed'
             else 'passed'
             end
    file, line = result.respond_to?(:source_location) ? result.source_location : []
    klass = result.respond_to?(:klass) ? result.klass : result.class.name
    file = GorgonRunner.relative(file)
    # The file that was asked for owns the test, even when a helper module it includes
    # defines it; in a batch the test's own file tells.
    unit = GorgonRunner.current_file ? GorgonRunner.path_of(GorgonRunner.current_file) : file
    entry = { name: "#{klass}##{result.name}", classname: klass.to_s,
              file: file, unit: unit, line: line, status: status, seconds: result.time.to_f,
              # How to run this test alone (`FILE::Class#test`), for splitting a slow file.
              id: unit && "#{unit}::#{klass}##{result.name}" }
    if failure
      error = failure.respond_to?(:error) ? failure.error : failure
      message = status == 'errored' ? "#{error.class}: #{error.message}" : failure.message
      backtrace = Minitest.filter_backtrace(error.backtrace || [])
      entry[:message] = message.to_s.strip
      entry[:details] = GorgonRunner.trim_backtrace(backtrace)
    end
    GorgonRunner.tests << entry
  end
end

# Where a test class was written: the file that defines its constant, or else (a
# minitest/spec `describe`) the file of its first test.
def gorgon_home_of(klass)
  if klass.name && Object.respond_to?(:const_source_location)
    location = begin
      Object.const_source_location(klass.name)
    rescue NameError, ArgumentError
      nil
    end
    return GorgonRunner.relative(location.first) if location && !location.empty?
  end
  method = klass.runnable_methods.first
  location = method && klass.instance_method(method).source_location
  location && GorgonRunner.relative(location.first)
end

TEST_FILE = %r{(_test|_spec)\.rb\z|(\A|/)test_[^/]*\.rb\z}

# Whether a class loaded while loading `paths` runs with them: a class written in another
# test file (one that `paths` require) runs with that file, as a serial run counts it once;
# a class written in a helper runs with the files that loaded it.
def gorgon_runs_with?(klass, paths)
  home = gorgon_home_of(klass)
  home.nil? || paths.include?(home) || !home.match?(TEST_FILE)
end

# Runs the block as Minitest.run runs its tests: a class that calls `parallelize_me!` (as
# ActiveSupport::Testing::Isolation does) only queues its tests in Minitest's parallel
# executor, whose threads Minitest.run starts before the tests and waits for after them;
# without that its tests would never run nor be reported.
def gorgon_in_parallel_executor
  executor = Minitest.respond_to?(:parallel_executor) && Minitest.parallel_executor
  # Minitest before 5.11 starts its executor once, when made, and cannot start it again.
  return yield unless executor.respond_to?(:start)

  executor.start
  begin
    yield
  ensure
    executor.shutdown
  end
end

# The test files this process has loaded.
LOADED_FILES = Set.new

# A session runs one test of a file it has loaded (a slow file split into its tests) from the
# classes it already has: no second load, which would cost what the file's load costs.
GorgonRunner.reruns_loaded_ids = true

# A request names files, or single tests as `FILE::Class#test` (the ids reported above).
GorgonRunner.serve("minitest #{Minitest::VERSION} (ruby #{RUBY_VERSION})") do |files, args, _shared|
  paths = files.map { |entry| entry.split('::', 2).first }.uniq
  load_error = paths.each do |file|
    path = File.expand_path(file)
    # A file another test file required is loaded already: its classes wait for it.
    load path unless $LOADED_FEATURES.include?(path) || LOADED_FILES.include?(path)
    LOADED_FILES << path
  rescue ScriptError, StandardError => e
    break({ outcome: 'load_error',
            message: "#{file} failed to load: #{e.class}: #{e.message}\n#{GorgonRunner.trim_backtrace(e.backtrace)}" })
  end
  next load_error if load_error.is_a?(Hash)
  GorgonRunner.forget_classless_fixture_sets
  options = Minitest.process_args(args)
  # One test alone: Minitest's own `-n` filter, which matches `Class#test` exactly.
  test = files.size == 1 && files.first.split('::', 2)[1]
  options[:filter] = test if test
  Minitest.seed = options[:seed] if Minitest.respond_to?(:seed=)
  reporter = Minitest::CompositeReporter.new
  reporter << GorgonMinitestReporter.new
  reporter.start
  classes = if test
              # The filter picks the one test among the classes written in its file.
              (Minitest::Runnable.runnables - PRELOADED_RUNNABLES).select { |klass| gorgon_home_of(klass) == paths.first }
            else
              (Minitest::Runnable.runnables - PRELOADED_RUNNABLES - RAN_RUNNABLES.to_a)
                .select { |klass| gorgon_runs_with?(klass, paths) }
            end
  RAN_RUNNABLES.merge(classes)
  gorgon_in_parallel_executor { classes.each { |klass| klass.run(reporter, options) } }
  reporter.report
  { outcome: 'completed' }
end
