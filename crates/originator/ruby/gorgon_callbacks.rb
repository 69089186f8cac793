# gorgon-rs's stand-in for Ruby Gorgon's callbacks: defines Gorgon::DefaultCallbacks and
# Gorgon.callbacks, loads the project's callbacks_class_file (ARGV[1], relative to the working
# directory, as Gorgon loaded it) and calls one of its methods (ARGV[0]). A String returned by
# before_originate is the cluster id, as in Gorgon: it is printed as GORGON_CLUSTER_ID=... An
# exception is printed with its class, message and backtrace, and the exit status is 1.
module Gorgon
  class DefaultCallbacks
    %i[before_originate after_sync before_creating_workers before_start after_complete
       after_creating_workers after_job_finishes].each do |moment|
      define_method(moment) { nil }
    end
  end

  class << self
    attr_accessor :callbacks
  end
end

moment, class_file = ARGV
begin
  load File.expand_path(class_file)
  callbacks = Gorgon.callbacks
  raise "#{class_file} does not set Gorgon.callbacks = YourCallbacks.new" unless callbacks

  result = callbacks.public_send(moment)
  puts "GORGON_CLUSTER_ID=#{result}" if moment == 'before_originate' && result.is_a?(String)
rescue Exception => e # rubocop:disable Lint/RescueException
  warn "#{e.class}: #{e.message}"
  warn Array(e.backtrace).first(20).join("\n")
  exit 1
end
