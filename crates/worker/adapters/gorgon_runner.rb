# gorgon-rs built-in runner support for Ruby, shared by the RSpec and Minitest adapters: the
# runner protocol loop (docs/runner-protocol.md) and the fork per file that keeps files apart.
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
  # files until stdin ends. The block runs one file in a forked child and returns a hash with
  # at least :outcome.
  def self.serve(name, &run_file)
    proto = STDOUT.dup
    proto.sync = true
    STDOUT.reopen(STDERR)
    STDOUT.sync = true
    STDERR.sync = true
    proto.puts(JSON.generate(type: 'hello', protocol: PROTOCOL, runner: name))
    while (line = STDIN.gets)
      request = JSON.parse(line)
      next unless request['type'] == 'run'
      proto.puts(JSON.generate(run_forked(request, proto, &run_file)))
    end
    # exit! skips at_exit hooks, such as Minitest's autorun, that would run in this process.
    exit!(0)
  end

  def self.run_forked(request, proto, &run_file)
    file = request.fetch('file')
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
        run_file.call(file, args)
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
