# gorgon-rs built-in RSpec runner: loads RSpec and spec/spec_helper.rb once, then runs a
# worker's files in one warm session (or each file, or batch of quick files, in a fork of its
# own with isolation "fork") and reports every example (runner protocol).
require_relative 'gorgon_runner'
require_relative 'gorgon_rspec_matchers'
require 'rspec/core'

# A helper may require rspec/autorun, whose at_exit hook would run the suite again when a
# child that ran tests ends (the suite's other hooks run then): it is never installed.
RSpec::Core::Runner.instance_variable_set(:@installed_at_exit, true)
$LOAD_PATH.unshift(File.expand_path('lib'), File.expand_path('spec'))
require 'spec_helper' if File.exist?('spec/spec_helper.rb')

# RSpec loads its expectation and mock frameworks and its matchers lazily, on first use; load
# them here (after the helper, which may choose other frameworks) so that no forked child pays
# for them again. This is most of what a trivial file costs.
RSpec.configuration.expectation_frameworks
RSpec.configuration.mock_framework
gorgon_load_rspec_matchers
require 'rspec/core/formatters/exception_presenter'

# Collects each example's result, and errors reported outside examples (load errors).
class GorgonRspecFormatter
  RSpec::Core::Formatters.register self, :example_passed, :example_failed, :example_pending, :message

  class << self
    attr_accessor :messages
  end
  self.messages = []

  def initialize(_output); end

  def example_passed(notification)
    GorgonRunner.tests << entry(notification.example, 'passed')
  end

  def example_pending(notification)
    example = notification.example
    status = example.respond_to?(:skipped?) && example.skipped? ? 'skipped' : 'pending'
    GorgonRunner.tests << entry(example, status).merge(message: example.execution_result.pending_message)
  end

  def example_failed(notification)
    example = notification.example
    exception = example.execution_result.exception
    assertion = exception.class.name.to_s.start_with?('RSpec::Expectations', 'RSpec::Mocks', 'RSpec::Core::Pending')
    message = exception.message.to_s
    message = "#{exception.class}: #{message}" unless assertion
    backtrace = RSpec.configuration.backtrace_formatter.format_backtrace(exception.backtrace || [], example.metadata)
    GorgonRunner.tests << entry(example, assertion ? 'failed' : 'errored').merge(
      message: message.strip, details: GorgonRunner.trim_backtrace(backtrace)
    )
  end

  def message(notification)
    self.class.messages << notification.message
  end

  private

  def entry(example, status)
    file = GorgonRunner.relative(example.metadata[:file_path])
    spec_file = GorgonRunner.relative(example.metadata[:rerun_file_path] || example.metadata[:file_path])
    { name: example.full_description,
      classname: example.example_group.top_level_description,
      file: file,
      unit: spec_file,
      # How to run this example alone, for splitting a slow file: only for examples
      # written in the spec file itself (not in a shared group elsewhere).
      id: file == spec_file ? "#{file}:#{example.metadata[:line_number]}" : nil,
      line: example.metadata[:line_number],
      status: status,
      seconds: example.execution_result.run_time.to_f }
  end
end

# A session runs a worker's files as one serial run does, with one `RSpec::Core::Runner.run`
# per file: the suite's `before(:suite)` hooks run before its first file and its
# `after(:suite)` hooks when it ends, not around every file (a suite that freezes a registry
# before the suite and resets it after would otherwise lose it after the first file).
module GorgonSuiteHooksOncePerSession
  attr_accessor :gorgon_session

  def with_suite_hooks
    return super unless gorgon_session
    return yield if dry_run?

    unless @gorgon_before_suite_ran
      @gorgon_before_suite_ran = true
      RSpec.current_scope = :before_suite_hook if RSpec.respond_to?(:current_scope=)
      run_suite_hooks('a `before(:suite)` hook', @before_suite_hooks)
    end
    RSpec.current_scope = :suite if RSpec.respond_to?(:current_scope=)
    GorgonRunner.forget_classless_fixture_sets
    yield
  end

  def gorgon_after_suite
    return unless @gorgon_before_suite_ran

    RSpec.current_scope = :after_suite_hook if RSpec.respond_to?(:current_scope=)
    run_suite_hooks('an `after(:suite)` hook', @after_suite_hooks)
  end
end
if RSpec.configuration.respond_to?(:with_suite_hooks, true) &&
   RSpec::Core::Configuration.private_method_defined?(:run_suite_hooks)
  RSpec.configuration.singleton_class.prepend(GorgonSuiteHooksOncePerSession)
  GorgonRunner.at_session_end { RSpec.configuration.gorgon_after_suite }
end

# A session parses the same framework arguments for every file: RSpec builds a whole option
# parser to do it, which is half of what a trivial file costs in a session. The parse of the
# arguments is kept for the session; each file's options are a copy with the file added.
class GorgonSessionOptions < RSpec::Core::ConfigurationOptions
  @parsed = {}
  class << self
    attr_reader :parsed
  end

  def initialize(args, files)
    @gorgon_args = args
    @gorgon_files = files
    super([*args, *files])
  end

  def command_line_options
    @command_line_options ||= begin
      parsed = (self.class.parsed[@gorgon_args] ||= RSpec::Core::Parser.parse(@gorgon_args))
      copy = Marshal.load(Marshal.dump(parsed))
      copy[:files_or_directories_to_run] = Array(copy[:files_or_directories_to_run]) + @gorgon_files
      copy
    rescue TypeError # an option holds a proc (`--bisect`): parse it all again
      RSpec::Core::Parser.parse([*@gorgon_args, *@gorgon_files])
    end
  end
end

# What `RSpec::Core::Runner.run` does, with the options of a session.
def gorgon_run_in_session(args, files)
  RSpec::Core::Runner.trap_interrupt
  options = GorgonSessionOptions.new(args, files)
  if options.options[:runner]
    options.options[:runner].call(options, $stderr, $stdout)
  else
    RSpec::Core::Runner.new(options).run($stderr, $stdout)
  end
end

# Every example names its spec file (`rerun_file_path`), so a batch of quick files runs as
# one `Runner.run` in a session, as in a serial run, and each example still counts for its file.
GorgonRunner.runs_batches_in_session = true

version = "rspec #{RSpec::Core::Version::STRING} (ruby #{RUBY_VERSION})"
GorgonRunner.serve(version) do |files, args, shared|
  world = RSpec.world
  # A session runs many files: each starts from a world with no example groups and no
  # quit request left by the one before.
  world.non_example_failure = false if world.respond_to?(:non_example_failure=)
  world.wants_to_quit = false if world.respond_to?(:wants_to_quit=)
  world.rspec_is_quitting = false if world.respond_to?(:rspec_is_quitting=)
  # RSpec keeps the declaration lines of the groups it had when it first matched a
  # `file:LINE` filter, and `RSpec.clear_examples` does not forget them: without this, a
  # session that ran `a_spec.rb:2` finds no example at `b_spec.rb:6`.
  world.instance_variable_set(:@descending_declaration_line_numbers_by_file, nil)
  GorgonRspecFormatter.messages.clear
  RSpec.configuration.add_formatter(GorgonRspecFormatter)
  # Concurrent workers share the tree: none of them writes the example status file.
  RSpec.configuration.example_status_persistence_file_path = nil
  RSpec.configuration.gorgon_session = shared if RSpec.configuration.respond_to?(:gorgon_session=)
  begin
    if shared
      gorgon_run_in_session(args, files)
    else
      RSpec::Core::Runner.run([*args, *files], $stderr, $stdout)
    end
    outside = world.respond_to?(:non_example_failure) && world.non_example_failure
    if outside
      { outcome: 'load_error',
        message: "#{files.join(', ')}: an error occurred outside of examples (while loading the file?)\n" +
                 GorgonRspecFormatter.messages.join("\n").strip }
    else
      { outcome: 'completed' }
    end
  ensure
    RSpec.clear_examples if shared
  end
end
