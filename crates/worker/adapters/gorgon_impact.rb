# gorgon-rs impact recording for the Ruby runners (GORGON_IMPACT_RECORD=1, docs/impact.md):
# which scopes (a file's top level, its methods) of the project's own files each test file
# runs, from Ruby's Coverage in methods mode, started before the suite's helper loads. A
# file's top level runs once per process, so every file loaded so far in the process is a
# dependency of the file being run; a method counts for the file that ran it, and for every
# later file of the process when it ran while a file loaded (`require`, `load`, autoload:
# what it computed, a constant say, is there for them all) or before the session's first
# file (the helper, the hooks). Each process also tells, once, every method Coverage lists
# (`known`, run or not: those defined so far): a change in the body of one no test ran
# selects no test file.
require 'coverage'
require 'digest/sha1'
require 'set'

module GorgonImpact
  class << self
    def enabled?
      ENV['GORGON_IMPACT_RECORD'] == '1'
    end

    def start
      @root = "#{File.realpath(Dir.pwd)}/"
      @here = "#{File.realpath(__dir__)}/"
      @loaded = Set.new
      @ran = Hash.new { |hash, path| hash[path] = Set.new }
      @always = Hash.new { |hash, path| hash[path] = Set.new }
      @sources = {}
      @known = Hash.new { |hash, path| hash[path] = Set.new }
      @untold = Hash.new { |hash, path| hash[path] = [] }
      @depth = 0
      Coverage.start(methods: true)
      Kernel.prepend(Requires)
      Kernel.singleton_class.prepend(Requires)
    end

    # Runs a `require` or `load`: what runs meanwhile (at the outermost one) is load-time
    # code, a dependency of every later file.
    def loading
      return yield if @depth.positive?

      collect(@ran)
      @depth += 1
      begin
        yield
      ensure
        @depth -= 1
        collect(@always)
      end
    end

    # Whatever ran before a session's first file is a dependency of each of its files.
    def session_started
      collect
      @ran.each { |path, scopes| @always[path].merge(scopes) }
      @ran.clear
    end

    # The current file's impact, and a fresh start for the next file.
    def take
      collect
      impact = {}
      @loaded.each do |path|
        digest, last = source(path)
        next unless digest

        scopes = Set[[1, 1, last]].merge(@ran[path]).merge(@always[path])
        impact[path] = { 'digest' => digest, 'ran' => scopes.sort }
        known = @untold.delete(path)
        impact[path]['known'] = known.sort if known&.any?
      end
      @ran.clear
      impact
    end

    private

    # Folds the coverage since the last call into the loaded files, the methods that ran
    # (into `into`, path => scopes) and the methods defined so far.
    def collect(into = @ran)
      Coverage.result(stop: false, clear: true).each do |file, data|
        path = relative(file) or next
        @loaded << path
        (data[:methods] || {}).each do |(_, _, first, _, last, _), count|
          scope = [first, first + 1, last]
          into[path] << scope if count.positive?
          @untold[path] << scope if @known[path].add?(scope)
        end
      end
    end

    def relative(file)
      real = File.realpath(file)
      return nil unless real.start_with?(@root) && !real.start_with?(@here)

      path = real.delete_prefix(@root)
      path.split('/').any? { |part| part.start_with?('.') || part == 'vendor' } ? nil : path
    rescue SystemCallError
      nil
    end

    # [git blob id, last line + 1] of a project file (the top level's scope reaches past the
    # last line, so that lines added at the end belong to it).
    def source(path)
      @sources[path] ||= begin
        data = File.binread(File.join(@root, path))
        [Digest::SHA1.hexdigest("blob #{data.bytesize}\0#{data}"), data.count("\n") + 1]
      rescue SystemCallError
        [nil, 0]
      end
    end
  end
end

# Kernel's loading methods, each through `GorgonImpact.loading`. `require_relative` resolves
# its path from its caller's file here (Ruby's own would resolve it from this file).
module GorgonImpact
  module Requires
    def require(path)
      GorgonImpact.loading { super }
    end

    def load(path, wrap = false) # rubocop:disable Style/OptionalBooleanParameter -- Kernel#load's own signature
      GorgonImpact.loading { super }
    end

    def require_relative(path)
      base = caller_locations(1, 1).first&.absolute_path
      raise LoadError, "cannot infer basepath for require_relative #{path}" unless base

      require(File.expand_path(path, File.dirname(base)))
    end
  end
end

GorgonImpact.start if GorgonImpact.enabled?
