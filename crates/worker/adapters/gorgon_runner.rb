# gorgon-rs built-in runner support for Ruby, shared by the RSpec and Minitest adapters: the
# runner protocol loop (docs/runner-protocol.md) in a pristine process that has loaded the
# framework and the suite's helper. By default it forks one long-lived session per worker that
# runs the requested files in turn, as a serial run does (a session that dies takes only the
# file it was running; a file loaded once already gets a fresh session). With
# `"isolation": "fork"` in a request, each file (or batch of quick files) runs in a fork of its
# own instead, and a troubled batch runs again file by file.
require 'json'
require 'set'
# Before anything of the project loads, so that recording sees it (docs/impact.md).
require_relative 'gorgon_impact'
require_relative 'gorgon_callbacks'

module GorgonRunner
  PROTOCOL = 1
  BACKTRACE_LINES = 15

  # Active Record caches the fixture sets a test loaded (per connection, for the tests after it;
  # a test that is not transactional clears the cache) and resolves each set's model class when
  # it reads the set: `topics` is `Topic` if that constant is loaded then, else the set has no
  # class and its fixtures cannot be found (`FixtureClassNotFound`). A serial run loads every file
  # before any test runs, so every model a file requires is loaded by then; a session loads each
  # file just before its tests, so a set read by an earlier file that does not require its model
  # (Active Record's own serialized_attribute_test.rb reads `topics` with a Topic of its own)
  # would stay cached without a class for the files after it that do. Once a request's files are
  # loaded (Minitest), or before a session runs the examples of the files it loaded (RSpec), the
  # sets cached without a class whose model now exists are dropped, so they are read again with
  # it, as a serial run reads them.
  def self.forget_classless_fixture_sets
    return unless defined?(ActiveRecord::FixtureSet) &&
                  ActiveRecord::FixtureSet.class_variable_defined?(:@@all_cached_fixtures)

    ActiveRecord::FixtureSet.class_variable_get(:@@all_cached_fixtures).each_value do |sets|
      sets.delete_if do |name, set|
        next false if !set.respond_to?(:model_class) || set.model_class

        config = set.respond_to?(:config) ? set.config : ActiveRecord::Base
        model = ActiveRecord::FixtureSet.default_fixture_model_name(name.to_s, config).safe_constantize
        model.is_a?(Class) && model < ActiveRecord::Base
      end
    end
  rescue StandardError
    nil
  end

  # The job's Gorgon callbacks class (GORGON_CALLBACKS_CLASS_FILE), if it has one: loaded
  # already when this runner forked from the job's preload process, else loaded here.
  def self.callbacks_class_file
    ENV['GORGON_CALLBACKS_CLASS_FILE']
  end

  # Runs a moment of the callbacks class in this process, its output on stderr; when it
  # raises, says so on `proto` (the protocol's stdout; by default stdout as it was) and exits.
  def self.run_class_callback(moment, proto = nil)
    return unless callbacks_class_file

    Gorgon.with_stdout_on_stderr do |stdout|
      proto ||= stdout
      Gorgon.load_callbacks(callbacks_class_file) unless Gorgon.callbacks
      Gorgon.run_callback(moment)
    end
  rescue Exception => e # rubocop:disable Lint/RescueException -- reported, then the runner ends
    proto.puts(JSON.generate(type: 'callback_failed', callback: moment.to_s, message: Gorgon.describe(e)))
    proto.flush
    exit!(1)
  end

  # Results of the file being run, filled in by the framework adapter in the forked child so
  # that tests finished before a test ends the process are still reported.
  def self.tests
    @tests ||= []
  end

  # The file (or test id) a session is running, when it runs one alone: the adapters
  # attribute tests to it whatever file defines them (a shared group, a helper module).
  class << self
    attr_accessor :current_file
    # The adapter can run a test id (`FILE::test`, `FILE:LINE`) of a file its session has
    # loaded already, without loading the file again.
    attr_accessor :reruns_loaded_ids
    # The adapter can run a batch of quick files as one run of the framework in a session
    # (and attribute each test to its file), as a serial run runs them.
    attr_accessor :runs_batches_in_session
  end

  # A path relative to the working directory (the workspace), without a leading "./".
  def self.relative(path)
    return nil if path.nil?
    path = path.to_s
    here = Dir.pwd + '/'
    path = path[here.length..] if path.start_with?(here)
    path.sub(%r{\A\./}, '')
  end

  # The file a request names: `spec/a_spec.rb:12`, `spec/a_spec.rb[1:2]` and
  # `test/a_test.rb::ATest#test_b` name the file before their suffix.
  def self.path_of(entry)
    entry.split('::', 2).first.sub(/(:\d+)+\z/, '').sub(/\[[\d:,]+\]\z/, '')
  end

  def self.trim_backtrace(lines)
    lines = Array(lines).reject { |l| l.include?('/gems/') || l.include?('/rubygems/') || l.include?('gorgon_runner') || l.include?('gorgon_rspec') || l.include?('gorgon_minitest') }
    lines.first(BACKTRACE_LINES).map { |l| relative(l) }.join("\n")
  end

  # Keeps stdout for protocol lines and sends everything else printed to stderr, then serves
  # requests until stdin ends. The block runs a list of files (one, or a batch) and returns a
  # hash with at least :outcome; each test it records names its file in :unit (the requested
  # file it belongs to) or :file. Its third argument is true in a long-lived session, where
  # it must leave the framework ready for the next file.
  def self.serve(name, &run_files)
    proto = STDOUT.dup
    proto.sync = true
    @log = STDERR.dup
    @log.sync = true
    STDOUT.reopen(STDERR)
    STDOUT.sync = true
    STDERR.sync = true
    proto.puts(JSON.generate(type: 'hello', protocol: PROTOCOL, runner: name, batches: true))
    supervisor = Supervisor.new(proto, run_files)
    emit = ->(answer) { proto.puts(JSON.generate(without_units(answer))) }
    while (line = STDIN.gets)
      request = JSON.parse(line)
      files = case request['type']
              when 'run' then [request.fetch('file')]
              when 'run_batch' then request.fetch('files')
              else next
              end
      if request['isolation'] == 'fork'
        answers = if request['type'] == 'run'
                    [run_forked(request, proto, files, &run_files)]
                  else
                    run_batch(request, proto, &run_files)
                  end
        answers.each(&emit)
      else
        supervisor.run(request, files, &emit)
      end
    end
    supervisor.stop
    run_class_callback(:after_complete, proto)
    report_coverage
    # The suite's at_exit hooks ran in the children that ran its tests (`end_child`); exit!
    # keeps them from running a second time here.
    exit!(0)
  end

  # A child that runs tests carries the suite's coverage on: SimpleCov measures in the process
  # that started it (this runner, which loaded the suite's helper) and writes its result as
  # that process exits, but here the tests run in forked children. Each child takes the
  # measure over as SimpleCov does for a forked process (`SimpleCov.at_fork`, what its
  # `enable_for_subprocesses` runs on `Process.fork`): a command name of its own, so that no
  # child's result replaces another's in the result set, written when the child ends.
  def self.child_runs_tests
    SimpleCov.at_fork.call(Process.pid) if defined?(SimpleCov) && SimpleCov.running
  end

  # Ends a child that ran tests as a serial run ends: the suite's at_exit hooks run (SimpleCov
  # writes its result there), their output on the runner's stderr.
  def self.end_child
    STDOUT.flush
    STDERR.flush
    STDOUT.reopen(@log)
    STDERR.reopen(@log)
    exit(0)
  end

  # SimpleCov's end in this runner, once its children have written their results: as the
  # parent of forked processes, it merges what they measured (in its coverage_dir) and
  # writes its report. Its other at_exit hooks ran in the children.
  def self.report_coverage
    return unless defined?(SimpleCov) && SimpleCov.running && SimpleCov.pid == Process.pid

    SimpleCov.at_exit_behavior
  rescue SystemExit # its minimum coverage, which a worker's share of the suite cannot judge
    nil
  rescue StandardError => e
    warn("SimpleCov failed to write its report: #{e.class}: #{e.message}")
  end

  # The answer for the file a process was running when it died without answering.
  def self.death_answer(file, status)
    message = if status.signaled?
                "#{file}: the process running the file was killed by signal #{status.termsig} (SIG#{Signal.signame(status.termsig)})"
              else
                "#{file}: a test or the file itself ended the process with exit status #{status.exitstatus} (exit!) while the file was running"
              end
    { 'type' => 'file_done', 'file' => file, 'outcome' => status.signaled? ? 'killed' : 'exited',
      'tests' => [], 'message' => message }
  end

  # Runs one file in a session; returns the answer and whether the session can go on.
  def self.run_in_session(file, args, run_files)
    tests.clear
    self.current_file = file
    result = begin
      run_files.call([file], args, true)
    rescue SystemExit => e
      { outcome: 'exited',
        message: "#{file}: a test or the file itself called exit (status #{e.status}) while the file was running" }
    rescue Exception => e # rubocop:disable Lint/RescueException -- report anything, then end the session
      { outcome: 'runner_error', message: "#{e.class}: #{e.message}\n#{trim_backtrace(e.backtrace)}" }
    end
    STDOUT.flush
    STDERR.flush
    answer = result.transform_keys(&:to_s).merge('type' => 'file_done', 'file' => file, 'tests' => tests.dup)
    answer['message'] = answer['message'].gsub("#{Dir.pwd}/", '') if answer['message']
    answer['impact'] = GorgonImpact.take if GorgonImpact.enabled?
    [answer, %w[completed load_error].include?(answer['outcome'])]
  end

  # Runs a batch of quick files as one run of the framework in the session: the answers
  # (see `answers_by_file`), or nil when each file must run alone.
  def self.run_together_in_session(files, args, run_files)
    tests.clear
    self.current_file = nil
    result = begin
      run_files.call(files, args, true)
    rescue Exception # rubocop:disable Lint/RescueException -- any trouble: the files run alone
      return nil
    end
    STDOUT.flush
    STDERR.flush
    impact = GorgonImpact.take if GorgonImpact.enabled?
    answers_by_file(files, result[:outcome], tests, impact)
  end

  # The answers of a batch of files run as one: its tests split by the file they belong to
  # (`unit`, else `file`; keys are symbols in a session, strings from a fork), or nil when
  # the run did not simply complete or a test cannot be told apart, and each file must then
  # give the answer it gives alone.
  # In a recording run each file gets what the whole batch ran (`impact`).
  def self.answers_by_file(files, outcome, tests, impact = nil)
    by_file = files.to_h { |file| [file, []] }
    unattributed = tests.reject do |test|
      by_file[test['unit'] || test[:unit] || test['file'] || test[:file]]&.push(test)
    end
    return nil unless outcome == 'completed' && unattributed.empty? && files.uniq.size == files.size

    files.map do |file|
      answer = { 'type' => 'file_done', 'file' => file, 'outcome' => 'completed', 'tests' => by_file[file] }
      impact ? answer.merge('impact' => impact) : answer
    end
  end

  # What the adapter wants done when a session ends normally (after its last file).
  def self.at_session_end(&block)
    (@session_end ||= []) << block
  end

  # The long-lived session child's loop: each request line names files to run in turn; it
  # says `start` before each and sends its answer after it.
  def self.serve_session(requests, results, run_files)
    GorgonImpact.session_started if GorgonImpact.enabled?
    serve_requests(requests, results, run_files)
    (@session_end || []).each(&:call)
  end

  # Sends this process's stdout and stderr to a request's output file, when it names one.
  def self.send_output_to(path)
    return unless path

    out = File.open(path, 'a')
    out.sync = true
    STDOUT.reopen(out)
    STDERR.reopen(out)
  end

  def self.serve_requests(requests, results, run_files)
    while (line = requests.gets)
      request = JSON.parse(line)
      send_output_to(request['output_path'])
      # A recording run takes the batch's files one by one, so that each records its own.
      if request['together'] && !GorgonImpact.enabled?
        files = request.fetch('files')
        results.puts(JSON.generate(type: 'start_together', files: files))
        answers = run_together_in_session(files, request['args'] || [], run_files)
        # Apart: this session has loaded the files, so each runs alone in a fresh one.
        return results.puts(JSON.generate(type: 'apart', files: files)) unless answers

        answers.each { |answer| results.puts(JSON.generate(without_units(answer))) }
        next
      end
      request.fetch('files').each do |file|
        results.puts(JSON.generate(type: 'start', file: file))
        answer, go_on = run_in_session(file, request['args'] || [], run_files)
        results.puts(JSON.generate(without_units(answer)))
        return unless go_on
      end
    end
  end

  # The supervisor's handle on one session child.
  class SessionChild
    attr_reader :args, :loaded
    attr_accessor :ran_any, :started

    def initialize(proto, args, run_files)
      @args = args
      request_reader, @requests = IO.pipe
      @results, result_writer = IO.pipe
      @pid = fork do
        @requests.close
        @results.close
        proto.close
        STDIN.reopen(File::NULL)
        result_writer.sync = true
        GorgonRunner.child_runs_tests
        GorgonRunner.serve_session(request_reader, result_writer, run_files)
        GorgonRunner.end_child
      end
      request_reader.close
      result_writer.close
      @requests.sync = true
      @loaded = Set.new
      @ran_any = false
      @started = 0
    end

    def send_files(files, request, together)
      @requests.puts(JSON.generate('files' => files, 'args' => @args, 'output_path' => request['output_path'],
                                   'together' => together))
      true
    rescue Errno::EPIPE, IOError
      false
    end

    # The child's next message, or nil once it has ended.
    def next_message
      line = @results.gets
      line && JSON.parse(line)
    end

    # Asks the child to end its session and waits for it; its status.
    def close
      @requests.close unless @requests.closed?
      @results.close unless @results.closed?
      Process.wait2(@pid)[1]
    end
  end

  # Runs requests in the session child, starting a fresh one when the last one died, when
  # the framework arguments change, or when a file was already loaded in it (loading a file
  # twice would define its tests twice). A file that fails to load in a session that ran
  # other files first is loaded again, first, in a fresh session, and that answer counts: a
  # serial run loads every file before it runs any test, so what earlier files' tests left
  # behind must not make a file unloadable.
  class Supervisor
    def initialize(proto, run_files)
      @proto = proto
      @run_files = run_files
      @child = nil
    end

    def run(request, files, &emit)
      args = request['args'] || []
      pending = files.dup
      again = Set.new
      # Files of a batch that did not simply complete as one run: each runs alone from now on.
      alone = Set.new
      until pending.empty?
        stop if @child && @child.args != args
        @child ||= SessionChild.new(@proto, args, @run_files)
        chunk = fresh_files(pending)
        if chunk.empty?
          stop
          next
        end
        chunk.each { |file| @child.loaded << GorgonRunner.path_of(file) }
        together = request['type'] == 'run_batch' && GorgonRunner.runs_batches_in_session &&
                   chunk.size > 1 && chunk.none? { |file| alone.include?(file) }
        running = nil
        waiting = chunk.dup
        if @child.send_files(chunk, request, together)
          until waiting.empty?
            message = @child.next_message or break
            if message['type'] == 'start'
              running = message['file']
              @child.ran_any = true
              @child.started += 1
            elsif message['type'] == 'start_together'
              @child.ran_any = true
              @child.started += chunk.size
            elsif message['type'] == 'apart'
              break
            elsif waiting.delete(message['file'])
              running = nil
              if message['outcome'] == 'load_error' && @child.started > 1 && again.add?(message['file'])
                next # still pending: it goes first in the next session
              end

              pending.delete(message['file'])
              emit.call(message)
            end
          end
        end
        next if waiting.empty?

        # A batch run as one that did not end with every answer (apart, or the session died
        # during it): no file can take the blame, so each runs alone in a fresh session.
        alone.merge(waiting) if together
        # The child ended: the file it was running takes the blame; the rest run in a fresh
        # session.
        ran_any = @child.ran_any
        status = stop
        if running
          pending.delete(running)
          emit.call(GorgonRunner.death_answer(running, status))
        elsif !ran_any
          first = pending.shift
          emit.call('type' => 'file_done', 'file' => first, 'outcome' => 'runner_error', 'tests' => [],
                    'message' => "#{first}: the runner's session ended before running any file (#{status}); see its output")
        end
      end
    end

    # The longest run of pending files, in order, that the current child can run: files it
    # has not loaded yet, and test ids of files it has loaded when the adapter reruns them.
    def fresh_files(pending)
      seen = Set.new
      pending.take_while do |file|
        path = GorgonRunner.path_of(file)
        id = path != file
        runnable = id && GorgonRunner.reruns_loaded_ids || (!@child.loaded.include?(path) && !seen.include?(path))
        seen << path unless id && GorgonRunner.reruns_loaded_ids
        runnable
      end
    end

    def stop
      child = @child
      @child = nil
      child&.close
    end
  end

  # Runs a batch of quick files in one child, and splits the tests by file. When the batch
  # did not simply complete (a load error, an exit, a crash) or a test cannot be told apart,
  # runs every file again on its own, so that each answer is exactly what the file alone
  # gives.
  def self.run_batch(request, proto, &run_files)
    files = request.fetch('files')
    together = run_forked(request, proto, files, &run_files)
    answers = answers_by_file(files, together['outcome'], together['tests'] || [], together['impact'])
    answers ||= files.map { |file| run_forked(request.merge('file' => file), proto, [file], &run_files) }
    answers.map { |answer| without_units(answer) }
  end

  def self.without_units(answer)
    answer['tests']&.each do |test|
      test.delete('unit')
      test.delete(:unit)
    end
    answer
  end

  def self.run_forked(request, proto, files, &run_file)
    file = files.join(', ')
    args = request['args'] || []
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      proto.close
      STDIN.reopen(File::NULL)
      child_runs_tests
      send_output_to(request['output_path'])
      self.current_file = files.size == 1 ? files.first : nil
      result = begin
        run_file.call(files, args, false)
      rescue SystemExit => e
        { outcome: 'exited',
          message: "#{file}: a test or the file itself called exit (status #{e.status}) while the file was running" }
      rescue Exception => e # rubocop:disable Lint/RescueException -- report anything, the child ends here
        { outcome: 'runner_error',
          message: "#{e.class}: #{e.message}\n#{trim_backtrace(e.backtrace)}" }
      end
      result[:tests] = tests
      result[:impact] = GorgonImpact.take if GorgonImpact.enabled?
      writer.write(JSON.generate(result))
      writer.close
      end_child
    end
    writer.close
    data = reader.read
    reader.close
    _, status = Process.wait2(pid)
    result = begin
      data.empty? ? nil : JSON.parse(data)
    rescue JSON::ParserError
      nil
    end
    result ||= death_answer(file, status)
    # Paths in messages are shown relative to the workspace, like the files themselves.
    result['message'] = result['message'].gsub("#{Dir.pwd}/", '') if result['message']
    result.merge('type' => 'file_done', 'file' => file)
  end
end

# Gorgon's before_start runs in the runner before the adapter loads the suite's helper and
# before its first file, as it ran in each Gorgon worker.
GorgonRunner.run_class_callback(:before_start)
