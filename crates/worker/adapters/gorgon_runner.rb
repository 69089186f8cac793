# gorgon-rs built-in runner support for Ruby, shared by the RSpec and Minitest adapters: the
# runner protocol loop (docs/runner-protocol.md), the fork per request that keeps files (or
# batches of quick files) apart, and the fallback that runs a troubled batch file by file.
require 'json'

module GorgonRunner
  PROTOCOL = 1
  BACKTRACE_LINES = 15

  # Results of the file being run, filled in by the framework adapter in the forked child so
  # that tests finished before a test ends the process are still reported.
  def self.tests
    @tests ||= []
  end

  # A path relative to the working directory (the workspace), without a leading "./".
  def self.relative(path)
    return nil if path.nil?
    path = path.to_s
    here = Dir.pwd + '/'
    path = path[here.length..] if path.start_with?(here)
    path.sub(%r{\A\./}, '')
  end

  def self.trim_backtrace(lines)
    lines = Array(lines).reject { |l| l.include?('/gems/') || l.include?('/rubygems/') || l.include?('gorgon_runner') || l.include?('gorgon_rspec') || l.include?('gorgon_minitest') }
    lines.first(BACKTRACE_LINES).map { |l| relative(l) }.join("\n")
  end

  # Keeps stdout for protocol lines and sends everything else printed to stderr, then serves
  # requests until stdin ends. The block runs a list of files (one, or a batch) in a forked
  # child and returns a hash with at least :outcome; each test it records names its file in
  # :unit (the requested file it belongs to) or :file.
  def self.serve(name, &run_files)
    proto = STDOUT.dup
    proto.sync = true
    STDOUT.reopen(STDERR)
    STDOUT.sync = true
    STDERR.sync = true
    proto.puts(JSON.generate(type: 'hello', protocol: PROTOCOL, runner: name, batches: true))
    while (line = STDIN.gets)
      request = JSON.parse(line)
      answers = case request['type']
                when 'run' then [without_units(run_forked(request, proto, [request.fetch('file')], &run_files))]
                when 'run_batch' then run_batch(request, proto, &run_files)
                else []
                end
      answers.each { |answer| proto.puts(JSON.generate(answer)) }
    end
    # exit! skips at_exit hooks, such as Minitest's autorun, that would run in this process.
    exit!(0)
  end

  # Runs a batch of quick files in one child, and splits the tests by file. When the batch
  # did not simply complete (a load error, an exit, a crash) or a test cannot be told apart,
  # runs every file again on its own, so that each answer is exactly what the file alone
  # gives.
  def self.run_batch(request, proto, &run_files)
    files = request.fetch('files')
    together = run_forked(request, proto, files, &run_files)
    by_file = files.to_h { |file| [file, []] }
    unattributed = (together['tests'] || []).reject { |test| by_file[test['unit'] || test['file']]&.push(test) }
    if together['outcome'] != 'completed' || files.uniq.size != files.size || !unattributed.empty?
      return files.map do |file|
        without_units(run_forked(request.merge('file' => file), proto, [file], &run_files))
      end
    end
    files.map do |file|
      without_units('type' => 'file_done', 'file' => file, 'outcome' => 'completed', 'tests' => by_file[file])
    end
  end

  def self.without_units(answer)
    answer['tests']&.each { |test| test.delete('unit') }
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
      if (path = request['output_path'])
        out = File.open(path, 'a')
        out.sync = true
        STDOUT.reopen(out)
        STDERR.reopen(out)
      end
      result = begin
        run_file.call(files, args)
      rescue SystemExit => e
        { outcome: 'exited',
          message: "#{file}: a test or the file itself called exit (status #{e.status}) while the file was running" }
      rescue Exception => e # rubocop:disable Lint/RescueException -- report anything, the child ends here
        { outcome: 'runner_error',
          message: "#{e.class}: #{e.message}\n#{trim_backtrace(e.backtrace)}" }
      end
      result[:tests] = tests
      writer.write(JSON.generate(result))
      writer.close
      STDOUT.flush
      STDERR.flush
      exit!(0)
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
    result ||= if status.signaled?
                 { 'outcome' => 'killed',
                   'message' => "#{file}: the process running the file was killed by signal #{status.termsig} (SIG#{Signal.signame(status.termsig)})" }
               else
                 { 'outcome' => 'exited',
                   'message' => "#{file}: a test or the file itself ended the process with exit status #{status.exitstatus} (exit!) while the file was running" }
               end
    # Paths in messages are shown relative to the workspace, like the files themselves.
    result['message'] = result['message'].gsub("#{Dir.pwd}/", '') if result['message']
    result.merge('type' => 'file_done', 'file' => file)
  end
end
